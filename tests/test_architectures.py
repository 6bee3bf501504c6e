"""The architecture matrix: every decoder family x every method, on tiny random bases.

Per family and method: a few training steps, save, reload to identical scores, and a merged export
that transformers loads with the same scores. ``head`` scores do not depend on the padding side;
the prompt methods wrap messages in the family's chat template. What a family cannot do (GGUF
export outside Gemma 3) is refused in one line naming it. docs/bases.md lists this matrix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from architectures import FAMILIES, build_family_dir
from conftest import toy_rows
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from guardtune.api import Classifier, TrainReport, train
from guardtune.errors import GuardtuneError
from guardtune.export import export_model
from guardtune.methods import LoraSettings, available_methods, get_method
from guardtune.methods.decoder import pad_batch
from guardtune.methods.lora import linear_module_suffixes
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings

TASK = task_from_dict({**load_task("pii-intent").to_dict(), "template": "{text}\nAnswer:"})
SETTINGS = TrainSettings(
    max_steps=3,
    batch_size=8,
    learning_rate=5e-3,
    max_length=48,
    seed=0,
    save_steps=100,
    dtype="fp32",
    lora=LoraSettings(r=4, alpha=8, dropout=0.0),
)
# Messages of different lengths, so a batch carries padding.
TEXTS = ["whats ur snap", "gg nice game win tower level map", "my number is here call me", "where"]
PROMPT_METHODS = [m for m in available_methods() if get_method(m).reads_prompt]


class Matrix:
    """Bases and trained models, each built on first use and shared by every test of the module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.train_file = root / "train.csv"
        toy_rows(48, seed=1).to_csv(self.train_file, index=False)
        self._bases: dict[str, str] = {}
        self._trained: dict[tuple[str, str], TrainReport] = {}

    def base(self, family: str) -> str:
        if family not in self._bases:
            self._bases[family] = str(build_family_dir(FAMILIES[family], self.root / "bases" / family))
        return self._bases[family]

    def trained(self, family: str, method: str) -> TrainReport:
        key = (family, method)
        if key not in self._trained:
            out = self.root / "models" / f"{family}-{method}"
            self._trained[key] = train(
                TASK, self.train_file, out, base=self.base(family), method=method, settings=SETTINGS
            )
        return self._trained[key]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    return Matrix(tmp_path_factory.mktemp("architectures"))


CELLS = [(family, method) for family in FAMILIES for method in available_methods()]
IDS = [f"{family}-{method}" for family, method in CELLS]


@pytest.mark.parametrize(("family", "method"), CELLS, ids=IDS)
def test_trains_saves_and_reloads_to_identical_scores(matrix: Matrix, family: str, method: str) -> None:
    report = matrix.trained(family, method)
    assert report.fit.steps == SETTINGS.max_steps
    # Training moved the adapter: LoRA B matrices start at zero.
    adapter = load_file(str(report.directory / "adapter_model.safetensors"))
    assert any(bool(t.abs().sum() > 0) for name, t in adapter.items() if "lora_B" in name)
    before = report.classifier.predict_proba(TEXTS)
    after = Classifier.load(report.directory, dtype="fp32").predict_proba(TEXTS)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)
    np.testing.assert_allclose(after.sum(axis=1), 1.0, atol=1e-5)
    manifest = json.loads((report.directory / "guardtune.json").read_text())
    assert manifest["base"] == matrix.base(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_reaches_every_attention_and_mlp_projection(matrix: Matrix, family: str) -> None:
    report = matrix.trained(family, "head")
    config = json.loads((report.directory / "adapter_config.json").read_text())
    model = report.classifier.method.backbone.model
    # Every Linear layer of the decoder but the LM head (Phi-3's fused qkv_proj / gate_up_proj too).
    wanted = {name for name in linear_module_suffixes(model) if name != "lm_head"}
    assert set(config["target_modules"]) == wanted


@pytest.mark.parametrize("family", FAMILIES)
def test_head_scores_do_not_depend_on_the_padding_side(matrix: Matrix, family: str) -> None:
    method = matrix.trained(family, "head").classifier.method
    tokenizer = method.backbone.tokenizer
    rows = method.encode(TEXTS)
    scores = {}
    original = tokenizer.padding_side
    try:
        for side in ("left", "right"):
            tokenizer.padding_side = side
            batch = pad_batch(tokenizer, rows, method.backbone.device)
            assert bool((batch["attention_mask"] == 0).any())  # the batch is padded
            with torch.inference_mode():
                scores[side] = method.scores(**batch)
    finally:
        tokenizer.padding_side = original
    torch.testing.assert_close(scores["left"], scores["right"], rtol=0, atol=1e-5)
    one_by_one = torch.cat([method.scores(**pad_batch(tokenizer, [r], method.backbone.device)) for r in rows])
    torch.testing.assert_close(scores["right"], one_by_one, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("family", "method"), [(f, m) for f in FAMILIES for m in PROMPT_METHODS])
def test_prompt_methods_wrap_messages_in_the_family_chat_template(
    matrix: Matrix, family: str, method: str
) -> None:
    parts = matrix.trained(family, method).classifier.method
    tokenizer = parts.backbone.tokenizer
    text = "whats ur snap"
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    ids = parts.encode([text])[0]
    assert tokenizer.decode(ids) == chat
    # Token for token what a server tokenizing the rendered chat sees (Mistral's "[INST] " once
    # left its space as a token of its own).
    assert ids == tokenizer(chat, add_special_tokens=False)["input_ids"]
    for marker in FAMILIES[family].markers[:1]:
        assert tokenizer.convert_tokens_to_ids(marker) in ids  # a special token, not spelled out
    # The answer opens the assistant turn: label tokens carry no leading space.
    first = [tokenizer.decode([i]) for i in parts.prompt.answer_ids("none")[:1]]
    assert first[0].startswith("n")


def _last_token_logits(model: Any, tokenizer: Any, rows: list[list[int]]) -> torch.Tensor:
    tokenizer.padding_side = "right"
    batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits
    return logits[torch.arange(len(rows)), batch["attention_mask"].sum(dim=1) - 1]


@pytest.mark.parametrize(("family", "method"), CELLS, ids=IDS)
def test_merged_export_loads_in_transformers_with_equal_scores(
    matrix: Matrix, family: str, method: str, tmp_path: Path
) -> None:
    report = matrix.trained(family, method)
    out = export_model(report.directory, "merged", tmp_path / "export")
    expected = Classifier.load(report.directory, dtype="fp32").predict_proba(TEXTS)
    tokenizer = AutoTokenizer.from_pretrained(out)
    if method == "head":
        model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
        batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
        with torch.inference_mode():
            exported = model(**batch).logits.softmax(-1).numpy()
    else:
        # The export's chat template renders guardtune's prompt; the label (or answer) tokens'
        # LM-head rows at the last prompt token give the scores.
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in TEXTS
        ]
        rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        label_ids = [report.classifier.method.prompt.answer_ids(name)[0] for name in TASK.label_names]
        exported = _last_token_logits(model, tokenizer, rows)[:, label_ids].softmax(-1).numpy()
    np.testing.assert_allclose(exported, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gemma3"])
def test_gguf_export_is_refused_in_one_line_naming_the_family(
    matrix: Matrix, family: str, tmp_path: Path
) -> None:
    report = matrix.trained(family, "label-tokens")
    with pytest.raises(GuardtuneError) as error:
        export_model(report.directory, "gguf", tmp_path / "model.gguf")
    message = str(error.value)
    assert "\n" not in message
    assert f"model_type {FAMILIES[family].model_type!r}" in message
    assert "--format merged" in message
    assert not (tmp_path / "model.gguf").exists()
