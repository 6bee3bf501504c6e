"""``--quantize 4bit|8bit``: LoRA on a bitsandbytes-quantised base, here on bitsandbytes' CPU backend.

Per mode and method: training moves the loss, the model directory records the mode, reloading
quantises the base again and gives the same scores, and the merged export is a plain
(de-quantised) model."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_cli, toy_rows
from transformers import AutoModelForSequenceClassification

from guardtune.api import Classifier, TrainReport, train
from guardtune.backbone import load_backbone
from guardtune.errors import GuardtuneError
from guardtune.export import export_model
from guardtune.methods import LoraSettings
from guardtune.serve import load_guards
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings

bnb = pytest.importorskip("bitsandbytes", reason="--quantize needs bitsandbytes (the dev extra has it)")

TASK = task_from_dict({**load_task("pii-intent").to_dict(), "template": "{text}\nAnswer:"})
TEXTS = ["whats ur snap", "gg nice game win tower level map", "my number is here call me", "where"]
LAYERS = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}


def settings(mode: str) -> TrainSettings:
    return TrainSettings(
        max_steps=8,
        batch_size=8,
        learning_rate=5e-3,
        max_length=32,
        seed=0,
        save_steps=100,
        dtype="fp32",
        device="cpu",
        quantize=mode,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    )


@pytest.fixture(scope="module")
def trained(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("quantize")
    data = root / "train.csv"
    toy_rows(64, seed=4).to_csv(data, index=False)
    cache: dict[tuple[str, str], TrainReport] = {}

    def get(mode: str, method: str) -> TrainReport:
        if (mode, method) not in cache:
            out = root / f"{mode}-{method}"
            cache[mode, method] = train(
                TASK, data, out, base=tiny_base, method=method, settings=settings(mode)
            )
        return cache[mode, method]

    return get


# 8-bit label-tokens is left out: the 8-bit CPU kernel made it the slowest case (20 s) and it adds
# no code path the other three do not take.
@pytest.mark.parametrize(("mode", "method"), [("4bit", "head"), ("8bit", "head"), ("4bit", "label-tokens")])
def test_quantised_base_trains_records_and_reloads_to_identical_scores(
    trained: Any, mode: str, method: str
) -> None:
    report = trained(mode, method)
    losses = [entry["loss"] for entry in report.fit.log_history if "loss" in entry]
    assert losses[-1] < losses[0], losses  # training moves the loss
    manifest = json.loads((report.directory / "guardtune.json").read_text())
    assert manifest["training"]["quantize"] == mode
    reloaded = Classifier.load(report.directory, dtype="fp32")
    backbone = reloaded.method.backbone
    assert backbone.quantize == mode
    q_proj = backbone.model.get_decoder().layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, LAYERS[mode])  # quantised again, the adapter on top
    scores = reloaded.predict_proba(TEXTS)
    again = Classifier.load(report.directory, dtype="fp32").predict_proba(TEXTS)
    np.testing.assert_array_equal(again, scores)  # every load of the saved model scores alike
    # The model still in memory after training (and saving) scores exactly as its reload does:
    # the 4-bit layers train on their unpacked weights and are packed again as a load packs them.
    np.testing.assert_array_equal(scores, report.classifier.predict_proba(TEXTS))


def test_merged_export_of_a_quantised_model_is_a_plain_model(trained: Any, tmp_path: Path) -> None:
    report = trained("4bit", "head")
    out = export_model(report.directory, "merged", tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    # The adapter trained on the 4-bit weights, merged into the full-precision ones: the export
    # scores as guardtune does with the saved adapter on the unquantised base.
    tokenizer = report.classifier.method.backbone.tokenizer
    with torch.inference_mode():
        exported = model.eval()(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits.softmax(-1)
    full = load_backbone(report.classifier.manifest.base, dtype="fp32", device="cpu")
    expected = Classifier.load(report.directory, backbone=full).predict_proba(TEXTS)
    np.testing.assert_allclose(exported.numpy(), expected, rtol=0, atol=2e-5)
    assert not np.allclose(
        expected, report.classifier.predict_proba(TEXTS), atol=1e-4
    )  # not the 4-bit scores


def test_unknown_mode_and_missing_bitsandbytes_are_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(GuardtuneError, match="--quantize: expected 4bit or 8bit, found '3bit'"):
        TrainSettings(quantize="3bit")
    real_import = builtins.__import__

    def no_bitsandbytes(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "bitsandbytes":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    with pytest.raises(GuardtuneError, match=r"--quantize 4bit: needs bitsandbytes \(pip install") as error:
        load_backbone(tiny_base, quantize="4bit")
    assert "\n" not in str(error.value)
    args = ["train", "--task", "pii-intent", "--train", toy_files["val"], "--out", tmp_path / "m"]
    assert run_cli(monkeypatch, *args, "--base", tiny_base, "--quantize", "4bit", "--max-steps", "1") == 1


def test_serve_loads_a_quantised_guard_on_a_quantised_base_and_keeps_the_adapter_apart(trained: Any) -> None:
    report = trained("4bit", "head")
    guards = load_guards({"q": report.directory}, dtype="fp32", device="cpu")
    backbone = guards["q"].backbone
    assert backbone.quantize == "4bit"
    q_proj = backbone.model.get_decoder().layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit) and not q_proj.merged
    expected = Classifier.load(report.directory, dtype="fp32").predict_proba(TEXTS)
    np.testing.assert_array_equal(guards["q"].classifier.predict_proba(TEXTS), expected)


def test_gradients_flow_through_the_4bit_base_after_it_was_packed_for_inference(tiny_base: str) -> None:
    backbone = load_backbone(tiny_base, dtype="fp32", device="cpu", quantize="4bit")
    layer = backbone.model.get_decoder().layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    inputs = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        packed_out = layer(inputs)  # as inference runs: packed at load where the CPU has AVX-512 BF16
    layer.train()
    leaf = inputs.clone().requires_grad_(True)
    layer(leaf).sum().backward()
    assert leaf.grad is not None  # bitsandbytes' packed kernel alone gives no input gradient
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    expected = weight.sum(dim=0).expand_as(leaf).numpy()  # d(sum of x W^T)/dx; computed in bf16 below
    np.testing.assert_allclose(leaf.grad.numpy(), expected, rtol=0, atol=5e-3)
    layer.eval()
    with torch.inference_mode():  # packed again, exactly as at load
        np.testing.assert_array_equal(layer(inputs).numpy(), packed_out.numpy())
