"""A trained model directory as one plain model: the LoRA adapter merged into a fresh fp32 base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from guardtune.backbone import load_backbone
from guardtune.errors import GuardtuneError
from guardtune.methods import LoraMethod, get_method
from guardtune.modeldir import MANIFEST, Manifest, read_manifest

# What loads each merged form in transformers (named in errors that point to another format).
LOADERS = {"sequence-classifier": "AutoModelForSequenceClassification", "causal-lm": "AutoModelForCausalLM"}


@dataclass
class MergedModel:
    """The merged causal LM, its tokenizer, and the method that knows the head, labels and prompt."""

    directory: Path
    manifest: Manifest
    method: LoraMethod
    model: PreTrainedModel
    tokenizer: Any


def check_format(directory: Path, method_cls: type[LoraMethod], fmt: str) -> None:
    """Refuse ``fmt`` in one line unless the method's :class:`~guardtune.methods.MethodInfo` lists it."""
    info = method_cls.info
    if fmt in info.export_formats:
        return
    what = f"--format {fmt}: {directory} uses the {method_cls.name} method"
    if fmt == "gguf" and info.merged_as is not None:
        raise GuardtuneError(
            f"{what}, whose classifier llama.cpp cannot run; use --format merged "
            f"({LOADERS[info.merged_as]}) instead"
        )
    others = ", ".join(info.export_formats) or "none"
    raise GuardtuneError(f"{what}, which exports as: {others}")


def merge_model(directory: str | Path) -> MergedModel:
    """Load ``directory`` on a freshly loaded fp32 base and merge its adapter into the weights.

    fp32 so the merged weights are the adapter's exact sum, whatever dtype the model trained in;
    exports choose their own storage dtype afterwards.

    Raises:
        GuardtuneError: not a model directory, or its base cannot be loaded.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    method_cls = get_method(manifest.method, where=f"{directory / MANIFEST}: key 'method'")
    backbone = load_backbone(manifest.base, dtype="fp32")
    method = method_cls.load(directory, backbone, manifest.task, manifest.max_length)
    method.eval()
    with torch.no_grad():
        model = backbone.peft_model.merge_and_unload()
    model.to("cpu")
    model.eval()
    return MergedModel(directory, manifest, method, model, backbone.tokenizer)
