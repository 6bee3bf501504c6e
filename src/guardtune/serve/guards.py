"""The guards a server holds: loaded at start-up, several per shared base, plus the chat path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig

from guardtune.backbone import Backbone, load_backbone
from guardtune.classifier import Classifier
from guardtune.errors import GuardtuneError
from guardtune.methods import get_method
from guardtune.methods.lora import merge_for_inference
from guardtune.modeldir import MANIFEST, read_manifest
from guardtune.precision import quantize_projections

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Guard:
    """A loaded classifier under the name requests use, and the base it shares."""

    name: str
    classifier: Classifier
    backbone: Backbone

    @property
    def negative_label(self) -> str | None:
        """The "nothing to flag" outcome of a single-label guard (``None`` for multi-label).

        The task's ``negative_label`` when it is one of the labels (``safe``), else the policy's
        fallback, else the first label (``none`` for pii-intent).
        """
        return self.classifier.task.negative_outcome

    @property
    def categories(self) -> list[str]:
        """The labels that flag a text: every label but the negative one; a guard with an overall
        label (flagged when it is on) reports its harm categories."""
        task = self.classifier.task
        if task.overall is not None:
            return task.categories
        return [name for name in self.classifier.labels if name != self.negative_label]

    def decide(self, scores: np.ndarray) -> list[tuple[Any, list[str]]]:
        """Apply the task policy: per row the decided label(s) and the categories that flag it."""
        decided = self.classifier.task.decide(scores)
        if self.classifier.task.mode == "multi":
            return [(labels, list(labels)) for labels in decided]
        return [(label, [] if label == self.negative_label else [label]) for label in decided]


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (the name is then the directory's name)."""
    name, sep, directory = spec.partition("=")
    if not sep:
        name, directory = Path(spec).name, spec
    if not _NAME.match(name):
        raise GuardtuneError(
            f"--model {spec}: guard name {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(write --model NAME=DIR)"
        )
    return name, Path(directory)


def _base_key(base: str) -> str:
    path = Path(base).expanduser()
    return str(path.resolve()) if path.exists() else base


def load_guards(specs: dict[str, Path], dtype: str = "auto", device: str = "auto") -> dict[str, Guard]:
    """Load every guard; guards trained on the same base share one copy of its weights.

    Args:
        specs: guard name -> model directory.
        dtype: ``auto``, ``bf16``, ``fp32`` or ``int8`` for the base models. With ``int8`` each
            base's projections are quantised once all its guards are on; adapters stay unmerged
            beside them (in float), so guards can share a base and the chat path runs the base.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        GuardtuneError: a directory is not a model, or its base cannot be loaded.
    """
    if not specs:
        raise GuardtuneError("--model: give at least one model directory (--model NAME=DIR)")
    manifests = {name: read_manifest(directory) for name, directory in specs.items()}
    for name, directory in specs.items():  # an unknown method fails before any base loads
        get_method(manifests[name].method, where=f"{directory / MANIFEST}: key 'method'")
    backbones: dict[str, Backbone] = {}
    guards = {}
    for name, directory in specs.items():
        # A quantised base is another copy of the weights: guards share it only with their kind.
        quantize = manifests[name].quantize
        key = f"{_base_key(manifests[name].base)}#{quantize or 'full'}"
        if key not in backbones:
            backbones[key] = load_backbone(
                manifests[name].base, dtype=dtype, device=device, quantize=quantize
            )
        backbone = backbones[key]
        classifier = Classifier.load(directory, backbone=backbone, adapter_name=name)
        guards[name] = Guard(name=name, classifier=classifier, backbone=backbone)
    for backbone in backbones.values():
        hosted = [g for g in guards.values() if g.backbone is backbone]
        # Not into k-bit weights (merging re-quantises them, see Classifier.load), nor under int8:
        # PEFT unmerges for the chat path by editing float weights, which an int8 base has not.
        if (
            len(hosted) == 1
            and backbone.dtype == torch.float32
            and backbone.quantize is None
            and not backbone.int8
        ):
            merge_for_inference(backbone, hosted[0].classifier.method.adapter_name)
        if backbone.int8:
            quantize_projections(backbone.model)
    return guards


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat prompt: the tokenizer's chat template, or a plain transcript without one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return list(tokenizer(text)["input_ids"])


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def generate_reply(backbone: Backbone, messages: list[dict[str, str]], max_new_tokens: int) -> Reply:
    """The base model's greedy reply with every adapter disabled.

    A guard merged into its base for speed is unmerged by PEFT on the first such request; in
    bf16 the restored base weights may differ from the originals by one rounding step.
    """
    tokenizer = backbone.tokenizer
    ids = prompt_ids(tokenizer, messages)
    input_ids = torch.tensor([ids], device=backbone.device)
    model: Any = backbone.model
    eos = model.generation_config.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.inference_mode(), backbone.peft_model.disable_adapter():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
        )
    new = output[0, len(ids) :].tolist()
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [tokenizer.eos_token_id])
    finished = bool(new) and new[-1] in eos_ids
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    return Reply(text, len(ids), len(new), "stop" if finished or len(new) < max_new_tokens else "length")
