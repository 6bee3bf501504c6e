"""``--readout eos``: the head reads an end-of-sequence token appended to every message."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from guardtune.api import Classifier, train
from guardtune.backbone import load_backbone
from guardtune.errors import GuardtuneError
from guardtune.export import export_model
from guardtune.infer import predict_scores
from guardtune.methods import LoraSettings, get_method
from guardtune.methods.head import HEAD_FILE
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings, fit

TASK = load_task("pii-intent")
SHORT_PROMPT = task_from_dict({**TASK.to_dict(), "template": "{text}\nAnswer:"})
TEXTS = ["whats ur snap", "gg nice game", "my number is here call me"]


def test_eos_readout_appends_the_token_and_keeps_it_when_cutting(tiny_base: str) -> None:
    backbone = load_backbone(tiny_base, dtype="fp32")
    method = get_method("head").create(backbone, TASK, LoraSettings(r=2), 12)
    assert method.readout == "last"
    plain = method.encode(TEXTS)
    budget = method.message_budget()
    method.readout = "eos"
    eos = backbone.tokenizer.eos_token_id
    assert method.encode(TEXTS) == [[*ids, eos] for ids in plain]
    assert method.message_budget() == budget - 1
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 5)
    (cut,) = method.encode([long_text])
    assert len(cut) == 12 and cut[-1] == eos and cut[0] == backbone.tokenizer.bos_token_id


def test_eos_readout_is_trained_saved_and_read_back(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    settings = TrainSettings(max_steps=2, batch_size=8, max_length=32, seed=3, dtype="fp32", readout="eos")
    train(TASK, toy_files["train"], tmp_path / "eos", base=tiny_base, settings=settings)
    eos = Classifier.load(tmp_path / "eos", dtype="fp32")
    assert eos.method.readout == "eos"
    # Training it on at another readout is refused, not switched.
    with pytest.raises(GuardtuneError, match="--readout last: this head model reads at eos"):
        fit(eos.method, ["hi"], ["none"], replace(settings, readout="last"), tmp_path / "again")
    # The saved readout is what is read: scored as the other readout, the same model differs.
    scores = eos.predict_proba(TEXTS)
    eos.method.readout = "last"
    assert not np.allclose(predict_scores(eos.method, TEXTS, batch_size=4), scores, atol=1e-4)


def test_a_head_saved_before_readouts_reads_the_last_token(tiny_base: str, tmp_path: Path) -> None:
    settings = TrainSettings(max_steps=1, batch_size=2, max_length=16, dtype="fp32", readout="eos")
    out = tmp_path / "model"
    train(TASK, _rows(tmp_path), out, base=tiny_base, settings=settings)
    state = load_file(str(out / HEAD_FILE))
    save_file(state, str(out / HEAD_FILE), metadata={"labels": ",".join(TASK.label_names)})
    assert Classifier.load(out, dtype="fp32").method.readout == "last"
    save_file(state, str(out / HEAD_FILE), metadata={"readout": "middle"})
    with pytest.raises(GuardtuneError, match=r"head\.safetensors: readout 'middle' in its metadata") as error:
        Classifier.load(out, dtype="fp32")
    assert "\n" not in str(error.value)


def test_eos_readout_is_refused_where_it_cannot_apply(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(GuardtuneError, match=r"--readout: expected one of last, eos, found 'first'"):
        TrainSettings(readout="first")
    settings = TrainSettings(max_steps=1, dtype="fp32", readout="eos")
    backbone = load_backbone(tiny_base, dtype="fp32")
    with pytest.raises(GuardtuneError, match=r"--readout eos: the label-tokens method takes last$"):
        get_method("label-tokens").create(backbone, SHORT_PROMPT, LoraSettings(r=2), 16, readout="eos")
    for method in ("label-tokens", "generate"):
        with pytest.raises(GuardtuneError, match=f"--readout eos: the {method} method takes last$"):
            train(
                SHORT_PROMPT,
                toy_files["train"],
                tmp_path / "m",
                base=tiny_base,
                method=method,
                settings=settings,
            )
    assert not (tmp_path / "m").exists()
    method = get_method("head").create(backbone, TASK, LoraSettings(r=2), 16, readout="eos")
    backbone.tokenizer.eos_token = None
    try:
        with pytest.raises(GuardtuneError, match=r"--readout eos: the base .* has no end-of-sequence token"):
            method.encode(TEXTS)
    finally:
        backbone.tokenizer.eos_token = "<eos>"


def test_eos_readout_export_is_refused_for_a_base_that_pads_with_eos(tiny_base: str, tmp_path: Path) -> None:
    base = tmp_path / "pads-with-eos"
    shutil.copytree(tiny_base, base)
    config_path = base / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "pad_token": "<eos>"}))
    settings = TrainSettings(max_steps=1, batch_size=2, max_length=16, dtype="fp32", readout="eos")
    model = tmp_path / "model"
    train(TASK, _rows(tmp_path), model, base=str(base), settings=settings)
    with pytest.raises(GuardtuneError, match="the base pads with its end-of-sequence token") as error:
        export_model(model, "merged", tmp_path / "export")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "export").exists()


def _rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text(
        "text,label\nhi there,none\nwhats ur snap,asking\nmy snap is abc,giving\n", encoding="utf-8"
    )
    return path
