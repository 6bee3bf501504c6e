"""The trained-model directory contract: ``guardtune.json`` plus method parts in safetensors."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from guardtune.errors import GuardtuneError
from guardtune.task import TaskSpec, task_from_dict

MANIFEST = "guardtune.json"
FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    """Versions of the libraries that shape a saved model, recorded for reproducibility."""
    found = {}
    for name in ("guardtune", "torch", "transformers", "peft"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found


@dataclass
class Manifest:
    """What ``guardtune.json`` records about a trained model."""

    task: TaskSpec
    method: str
    base: str
    max_length: int
    lora: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "task": self.task.to_dict(),
            "method": self.method,
            "base": self.base,
            "max_length": self.max_length,
            "lora": self.lora,
            "training": self.training,
            "versions": self.versions,
        }

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def read_manifest(directory: str | Path) -> Manifest:
    """Read and check ``guardtune.json`` from a model directory.

    Raises:
        GuardtuneError: not a model directory, unreadable JSON, or missing keys.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise GuardtuneError(f"{directory}: no such model directory")
    if not path.is_file():
        raise GuardtuneError(
            f"{directory}: not a guardtune model directory (no {MANIFEST}; train one with `guardtune train`)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GuardtuneError(f"{path}: not valid JSON ({exc})") from exc
    missing = [k for k in ("task", "method", "base", "max_length", "lora") if k not in raw]
    if missing:
        raise GuardtuneError(f"{path}: missing keys {missing}")
    found_version = int(raw.get("format_version", 0))
    if found_version > FORMAT_VERSION:
        warnings.warn(
            f"{path} was written by a newer guardtune (format {found_version} > {FORMAT_VERSION}); "
            "keys this version does not know are ignored",
            stacklevel=2,
        )
    return Manifest(
        task=task_from_dict(raw["task"], source=f"{path}: task"),
        method=str(raw["method"]),
        base=str(raw["base"]),
        max_length=int(raw["max_length"]),
        lora=dict(raw["lora"]),
        training=dict(raw.get("training", {})),
        versions=dict(raw.get("versions", {})),
        format_version=found_version,
    )
