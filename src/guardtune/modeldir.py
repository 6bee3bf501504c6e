"""The trained-model directory contract: ``guardtune.json`` plus method parts in safetensors."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

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

    @property
    def quantize(self) -> str | None:
        """``4bit`` or ``8bit`` when the model trained on a bitsandbytes-quantised base, else None."""
        return self.training.get("quantize")

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


def read_json_object(path: Path) -> dict[str, Any]:
    """A model file holding one JSON object, or a one-line error naming the file.

    Raises:
        GuardtuneError: missing, unreadable, not UTF-8, not JSON (a file cut short), or not an object.
    """
    if not path.is_file():
        raise GuardtuneError(f"{path}: missing (expected a JSON file in the model directory)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GuardtuneError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise GuardtuneError(f"{path}: not UTF-8 text (byte {exc.start}); expected JSON") from exc
    except json.JSONDecodeError as exc:
        raise GuardtuneError(f"{path}: not valid JSON ({exc}); is the file complete?") from exc
    if not isinstance(raw, dict):
        raise GuardtuneError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


def read_tensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors model file, or a one-line error naming the file.

    Raises:
        GuardtuneError: missing, unreadable, or not a complete safetensors file.
    """
    if not path.is_file():
        raise GuardtuneError(f"{path}: missing (expected a safetensors file in the model directory)")
    try:
        return load_file(str(path), device=device)
    except OSError as exc:
        raise GuardtuneError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except SafetensorError as exc:
        raise GuardtuneError(f"{path}: not a complete safetensors file ({exc}); is it cut short?") from exc


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, read from its header only."""
    if not path.is_file():
        raise GuardtuneError(f"{path}: missing (expected a safetensors file in the model directory)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except OSError as exc:
        raise GuardtuneError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except SafetensorError as exc:
        raise GuardtuneError(f"{path}: not a complete safetensors file ({exc}); is it cut short?") from exc


def read_manifest(directory: str | Path) -> Manifest:
    """Read and check ``guardtune.json`` from a model directory.

    Raises:
        GuardtuneError: not a model directory, unreadable JSON, or missing or mistyped keys.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise GuardtuneError(f"{directory}: no such model directory")
    if not path.is_file():
        raise GuardtuneError(
            f"{directory}: not a guardtune model directory (no {MANIFEST}; train one with `guardtune train`)"
        )
    raw = read_json_object(path)
    missing = [k for k in ("task", "method", "base", "max_length", "lora") if k not in raw]
    if missing:
        raise GuardtuneError(f"{path}: missing keys {missing}")
    problems = [
        f"key {key!r}: expected {kind.__name__ if kind is not int else 'an integer'}, "
        f"found {type(raw[key]).__name__}"
        for key, kind in (("method", str), ("base", str), ("max_length", int), ("lora", dict))
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool)
    ]
    problems += [
        f"key {key!r}: expected an object, found {type(raw[key]).__name__}"
        for key in ("training", "versions")
        if not isinstance(raw.get(key, {}), dict)
    ]
    if not isinstance(raw.get("format_version", 0), int):
        problems.append(f"key 'format_version': expected an integer, found {raw['format_version']!r}")
    if problems:
        raise GuardtuneError(f"{path}: " + "; ".join(problems))
    found_version = int(raw.get("format_version", 0))
    if found_version > FORMAT_VERSION:
        warnings.warn(
            f"{path} was written by a newer guardtune (format {found_version} > {FORMAT_VERSION}); "
            "keys this version does not know are ignored",
            stacklevel=2,
        )
    return Manifest(
        task=task_from_dict(raw["task"], source=f"{path}: task"),
        method=raw["method"],
        base=raw["base"],
        max_length=raw["max_length"],
        lora=dict(raw["lora"]),
        training=dict(raw.get("training", {})),
        versions=dict(raw.get("versions", {})),
        format_version=found_version,
    )
