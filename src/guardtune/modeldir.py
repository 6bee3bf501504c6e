"""The trained-model directory contract: ``guardtune.json`` plus method parts in safetensors."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, Strict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from guardtune.errors import GuardtuneError
from guardtune.task import TaskSpec
from guardtune.validation import parse

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


class Manifest(BaseModel):
    """What ``guardtune.json`` records about a trained model.

    Keys this version does not know are ignored (a newer guardtune may add some; see
    :func:`read_manifest`).
    """

    model_config = ConfigDict(strict=True, extra="ignore")

    task: TaskSpec = Field(description="The task the model classifies (the task YAML's keys).")
    method: str = Field(description="The method that trained it (head, label-tokens, generate).")
    base: str = Field(description="The base model: an HF directory, a .gguf file, a hub id or gemma-3-270m.")
    max_length: Annotated[int, Strict()] = Field(description="Tokens per text the model reads.")
    lora: dict[str, Any] = Field(description="The LoRA settings it trained with.")
    training: dict[str, Any] = Field(default_factory=dict, description="The training settings and record.")
    versions: dict[str, Any] = Field(
        default_factory=package_versions, description="Library versions that wrote it."
    )
    format_version: int = Field(default=FORMAT_VERSION, description="The format of this file.")

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
    with _header(path) as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header (empty when it has none)."""
    with _header(path) as handle:
        return dict(handle.metadata() or {})


@contextmanager
def _header(path: Path) -> Iterator[Any]:
    """A safetensors file opened for its header, or a one-line error naming the file."""
    if not path.is_file():
        raise GuardtuneError(f"{path}: missing (expected a safetensors file in the model directory)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
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
    # A file from before format_version was recorded is format 0.
    manifest = parse(Manifest, {"format_version": 0, **raw}, str(path), quoted=True)
    if manifest.format_version > FORMAT_VERSION:
        warnings.warn(
            f"{path} was written by a newer guardtune (format {manifest.format_version} > {FORMAT_VERSION}); "
            "keys this version does not know are ignored",
            stacklevel=2,
        )
    return manifest
