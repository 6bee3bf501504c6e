"""Run an engine driver in its engine's virtual environment (``.engines/NAME``, made by
``make engines``) and read back its JSON result. Used by tests/test_engines.py and
benchmarks/bench_engines.py, which run in guardtune's own environment."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = Path(__file__).resolve().parent
# Each engine's import name, to tell a set-up environment from a missing or broken one.
MODULES = {"llama": "llama_cpp", "vllm": "vllm"}


def engines_dir() -> Path:
    return Path(os.environ.get("GUARDTUNE_ENGINES", ROOT / ".engines"))


def engine_python(name: str) -> Path:
    return engines_dir() / name / "bin" / "python"


def missing_engine(name: str) -> str | None:
    """Why the engine ``name`` cannot run here, or None when it can."""
    python = engine_python(name)
    if not python.exists():
        return f"{python} not found: run `make engines` first"
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({MODULES[name]!r}) is None)"
    if subprocess.run([str(python), "-c", probe], check=False).returncode != 0:
        return f"{python}: {MODULES[name]} is not installed: run `make engines`"
    return None


def run_driver(name: str, request: dict[str, Any], timeout: float = 1800, driver: str = "") -> dict[str, Any]:
    """Run ``DRIVER_driver.py`` (default: ``NAME_driver.py``) on ``request`` in the interpreter of
    the engine ``name``; its result as a dict.

    Raises:
        RuntimeError: the driver exited non-zero (the message ends with its stderr).
    """
    with tempfile.TemporaryDirectory(prefix=f"guardtune-{name}-") as tmp:
        request_path, result_path = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request_path.write_text(json.dumps(request), encoding="utf-8")
        script = DRIVERS / f"{driver or name}_driver.py"
        done = subprocess.run(
            [str(engine_python(name)), str(script), str(request_path), str(result_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"{script.name} exited {done.returncode}:\n{done.stderr[-6000:]}")
        result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
        result["stderr"] = done.stderr[-6000:]
        return result
