"""One merge policy for Classifier.load and the server (guardtune.merging.should_merge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer

from guardtune.api import Classifier, train
from guardtune.backbone import Backbone
from guardtune.merging import should_merge
from guardtune.serve import load_guards
from guardtune.task import load_task
from guardtune.train import TrainSettings


def _backbone(dtype: torch.dtype, quantize: str | None = None, int8: bool = False) -> Backbone:
    return Backbone(model=None, tokenizer=None, base="b", dtype=dtype, quantize=quantize, int8=int8)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_policy_merges_a_sole_float_adapter_in_fp32_and_bf16(dtype: torch.dtype) -> None:
    for bare_base_needed in (False, True):
        assert should_merge(_backbone(dtype), sole_adapter=True, bare_base_needed=bare_base_needed)
    assert not should_merge(_backbone(dtype), sole_adapter=False, bare_base_needed=False)
    assert not should_merge(_backbone(dtype, quantize="4bit"), sole_adapter=True, bare_base_needed=False)
    # int8 projections can be made from merged weights, but PEFT cannot unmerge them for the chat path.
    assert should_merge(_backbone(dtype, int8=True), sole_adapter=True, bare_base_needed=False)
    assert not should_merge(_backbone(dtype, int8=True), sole_adapter=True, bare_base_needed=True)


def _merged(backbone: Backbone) -> bool:
    layers: list[Any] = [m for m in backbone.peft_model.modules() if isinstance(m, LoraLayer)]
    return bool(layers) and all(layer.merged for layer in layers)


def test_server_and_classifier_merge_alike_in_bf16(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    fast = TrainSettings(max_steps=10, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, dtype="fp32")
    train(load_task("pii-intent"), toy_files["train"], tmp_path / "pii", base=tiny_base, settings=fast)
    texts = ["whats ur number", "gg nice map", "call me at my street"]
    alone = Classifier.load(tmp_path / "pii", dtype="bf16")
    guard = load_guards({"pii": tmp_path / "pii"}, dtype="bf16")["pii"]
    assert _merged(alone.method.backbone) and _merged(guard.backbone)
    np.testing.assert_array_equal(guard.classifier.predict_proba(texts), alone.predict_proba(texts))
    two = load_guards({"a": tmp_path / "pii", "b": tmp_path / "pii"}, dtype="bf16")
    assert not _merged(two["a"].backbone)  # a shared base keeps each adapter separate
