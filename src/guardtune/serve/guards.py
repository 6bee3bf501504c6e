"""The guards a server holds: loaded at start-up, several per shared base."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardtune.backbone import Backbone, load_backbone
from guardtune.classifier import Classifier
from guardtune.errors import GuardtuneError
from guardtune.merging import prepare_for_inference, should_merge
from guardtune.methods import get_method
from guardtune.modeldir import MANIFEST, read_manifest

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Guard:
    """A loaded classifier under the name requests use, and the base it shares.

    Its decision rules (which labels flag a text) are the task's: see
    :attr:`guardtune.task.TaskSpec.flag_labels` and :meth:`guardtune.task.TaskSpec.decide_flags`.
    """

    name: str
    classifier: Classifier
    backbone: Backbone


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


def load_guards(
    specs: dict[str, Path],
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[Any, str] | None = None,
) -> dict[str, Guard]:
    """Load every guard; guards trained on the same base share one copy of its weights.

    Args:
        specs: guard name -> model directory.
        dtype: ``auto``, ``bf16``, ``fp32`` or ``int8`` for the base models. With ``int8`` each
            base's projections are quantised once all its guards are on; adapters stay unmerged
            beside them (in float), so guards can share a base and the chat path runs the base.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        device_map, max_memory: spread each base over several GPUs (see
            :func:`guardtune.backbone.load_backbone`).

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
                manifests[name].base,
                dtype=dtype,
                device=device,
                quantize=quantize,
                device_map=device_map,
                max_memory=max_memory,
            )
        backbone = backbones[key]
        classifier = Classifier.load(directory, backbone=backbone, adapter_name=name)
        guards[name] = Guard(name=name, classifier=classifier, backbone=backbone)
    for backbone in backbones.values():
        hosted = [g for g in guards.values() if g.backbone is backbone]
        # The chat path runs the bare base (adapters off), so the policy hears it is needed.
        merge = should_merge(backbone, sole_adapter=len(hosted) == 1, bare_base_needed=True)
        prepare_for_inference(
            backbone,
            merge_adapter=hosted[0].classifier.method.adapter_name if merge else None,
            int8=backbone.int8,
        )
    return guards
