"""Exports of a trained model for tools that do not run guardtune: a merged HF directory, GGUF."""

from __future__ import annotations

from pathlib import Path

from guardtune.errors import GuardtuneError
from guardtune.export.gguf_file import OutType, write_gguf
from guardtune.export.merge import MergedModel, check_format, merge_model
from guardtune.export.merged import write_merged
from guardtune.methods import get_method
from guardtune.modeldir import MANIFEST, read_manifest

FORMATS = ("merged", "gguf")


def export_model(
    model_dir: str | Path,
    fmt: str,
    out: str | Path,
    outtype: OutType = "f16",
    overwrite: bool = False,
) -> Path:
    """Export a trained model directory.

    Args:
        model_dir: a directory written by ``guardtune train``.
        fmt: ``merged`` (a Hugging Face model directory) or ``gguf`` (one file for llama.cpp).
        out: the directory (``merged``) or ``.gguf`` file (``gguf``) to write.
        outtype: tensor type of the GGUF file, ``f16`` or ``f32`` (``merged`` is always fp32).
        overwrite: replace ``out`` when it exists.

    Returns:
        ``out``, complete (it is written under a temporary name and renamed).

    Raises:
        GuardtuneError: unknown format, ``out`` exists, or the model's method cannot take that
            format (checked before the base loads).

    Example:
        >>> export_model("runs/pii", "merged", "exports/pii")
    """
    out = Path(out)
    if fmt not in FORMATS:
        raise GuardtuneError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    if out.exists() and not overwrite:
        raise GuardtuneError(f"--out {out}: already exists (pass --overwrite to replace it)")
    if fmt == "gguf" and outtype not in ("f16", "f32"):
        raise GuardtuneError(f"--outtype: expected f16 or f32, found {outtype!r}")
    manifest = read_manifest(Path(model_dir))
    where = f"{Path(model_dir) / MANIFEST}: key 'method'"
    check_format(Path(model_dir), get_method(manifest.method, where=where), fmt)
    merged = merge_model(model_dir)
    if fmt == "merged":
        return write_merged(merged, out, overwrite=overwrite)
    return write_gguf(merged, out, outtype=outtype, overwrite=overwrite)


__all__ = ["FORMATS", "MergedModel", "export_model", "merge_model", "write_gguf", "write_merged"]
