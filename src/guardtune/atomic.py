"""Write-then-rename helpers, so an output file or directory is either complete or absent.

``tempfile`` creates its files 0600 and its directories 0700 (private, so nobody reads a half-written
file). Renamed into place as they are, every output would be readable by its owner only, whatever the
umask. So before the rename each temporary gets the mode a plain ``open()`` / ``mkdir()`` would have
given under the caller's umask, or, when it replaces an existing file or directory, that one's mode.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the platform allows."""
    with contextlib.suppress(OSError):
        # Linux reports it in /proc; os.umask can only be read by setting it, which races
        # with other threads creating files in that instant.
        found = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.MULTILINE)
        if found:
            return int(found.group(1), 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _final_mode(target: Path, default: int) -> int:
    """``target``'s mode when it exists (a replaced file keeps it), else ``default`` under the umask."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return default & ~current_umask()


def _umask_modes(folder: Path) -> None:
    """Give everything under ``folder`` the umask's modes: some writers (safetensors 0.8's
    ``save_file``) create their files private, as a temporary of their own renamed into place."""
    mask = current_umask()
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        executable = path.is_dir() or bool(path.stat().st_mode & stat.S_IXUSR)
        os.chmod(path, (0o777 if executable else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_dir(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _umask_modes(tmp)
        os.chmod(tmp, _final_mode(target, 0o777))
        if target.exists():
            if not overwrite:
                raise FileExistsError(f"{target} appeared while writing; not replacing it")
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path that is renamed onto ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # After the block: a writer may have replaced the temporary with a file of its own.
        os.chmod(tmp, _final_mode(target, 0o666))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
