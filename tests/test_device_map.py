"""``--device-map`` at inference, through the code path a multi-GPU load takes, on the CPU.

transformers and accelerate place the base by the map (``hf_device_map``, accelerate's hooks on
every mapped module); guardtune then scores as a plain load does. What cannot go with a map is
refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import dispatch_model
from conftest import run_cli, toy_rows

from guardtune.api import Classifier, train
from guardtune.backbone import load_backbone
from guardtune.device_map import check_placement, parse_device_map, parse_max_memory
from guardtune.errors import GuardtuneError
from guardtune.methods import LoraSettings
from guardtune.serve import load_guards
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings

TASK = task_from_dict({**load_task("pii-intent").to_dict(), "template": "{text}\nAnswer:"})
TEXTS = ["whats ur snap", "gg nice game win tower level map", "my number is here call me", "where"]
METHODS = ("head", "label-tokens", "generate")


@pytest.fixture(scope="module")
def trained(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One model directory per method, trained for two steps on the tiny base."""
    root = tmp_path_factory.mktemp("device-map")
    data = root / "train.csv"
    toy_rows(32, seed=4).to_csv(data, index=False)
    settings = TrainSettings(
        max_steps=2,
        batch_size=8,
        learning_rate=5e-3,
        max_length=32,
        seed=0,
        dtype="fp32",
        device="cpu",
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    )
    return {
        method: train(TASK, data, root / method, base=tiny_base, method=method, settings=settings).directory
        for method in METHODS
    }


def module_map(base: str) -> dict[str, str]:
    """A map naming each decoder layer, the embedding, the final norm and the LM head (all CPU)."""
    config = json.loads((Path(base) / "config.json").read_text())
    layers = {f"model.layers.{i}": "cpu" for i in range(config["num_hidden_layers"])}
    return {
        "model.embed_tokens": "cpu",
        **layers,
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }


@pytest.mark.parametrize("method", METHODS)
def test_every_device_map_form_scores_as_the_plain_load(
    trained: dict[str, Path], tiny_base: str, tmp_path: Path, method: str
) -> None:
    directory = trained[method]
    expected = Classifier.load(directory, dtype="fp32", device="cpu").predict_proba(TEXTS)
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(module_map(tiny_base)))
    for device_map, max_memory in (({"": "cpu"}, None), ("auto", "cpu=2GiB"), (str(map_file), None)):
        classifier = Classifier.load(directory, dtype="fp32", device_map=device_map, max_memory=max_memory)
        backbone = classifier.method.backbone
        assert backbone.device_map == parse_device_map(device_map) and backbone.devices == ["cpu"]
        np.testing.assert_allclose(classifier.predict_proba(TEXTS), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_a_base_behind_accelerate_hooks_scores_as_the_plain_load(
    trained: dict[str, Path], tiny_base: str, method: str
) -> None:
    """What a map over several GPUs adds: accelerate's hooks on every mapped module (forced here,
    where one CPU would otherwise skip them); the adapter goes on and merges into hooked layers."""
    directory = trained[method]
    expected = Classifier.load(directory, dtype="fp32", device="cpu").predict_proba(TEXTS)
    placement = module_map(tiny_base)
    for merge in (False, True):
        backbone = load_backbone(tiny_base, dtype="fp32", device_map=placement)
        dispatch_model(backbone.model, placement, main_device="cpu", force_hooks=True)
        assert hasattr(backbone.model.get_decoder().layers[0], "_hf_hook")
        classifier = Classifier.load(directory, backbone=backbone, merge=merge)
        np.testing.assert_allclose(classifier.predict_proba(TEXTS), expected, rtol=0, atol=1e-5)


def test_cli_predict_eval_and_serve_take_the_device_map(
    monkeypatch: pytest.MonkeyPatch, trained: dict[str, Path], tiny_base: str, tmp_path: Path
) -> None:
    model = trained["head"]
    data = tmp_path / "rows.csv"
    pd.DataFrame({"text": TEXTS, "label": ["asking", "none", "giving", "none"]}).to_csv(data, index=False)
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(module_map(tiny_base)))
    common = ["--model", model, "--data", data, "--dtype", "fp32"]
    assert run_cli(monkeypatch, "predict", *common, "--out", tmp_path / "plain.csv", "--device", "cpu") == 0
    assert (
        run_cli(monkeypatch, "predict", *common, "--out", tmp_path / "map.csv", "--device-map", map_file) == 0
    )
    plain, mapped = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(tmp_path / "map.csv")
    assert mapped["label"].tolist() == plain["label"].tolist()
    np.testing.assert_allclose(mapped.filter(like="score_"), plain.filter(like="score_"), rtol=0, atol=1e-6)
    args = ["eval", *common, "--out", tmp_path / "report", "--device-map", "auto", "--max-memory", "cpu=2GiB"]
    assert run_cli(monkeypatch, *args) == 0
    guards = load_guards({"pii": model}, dtype="fp32", device_map={"": "cpu"})
    assert guards["pii"].backbone.device_map == {"": "cpu"}
    np.testing.assert_allclose(
        guards["pii"].classifier.predict_proba(TEXTS),
        plain.filter(like="score_").to_numpy(),
        rtol=0,
        atol=1e-6,
    )


def refused(call: Any, match: str) -> None:
    with pytest.raises(GuardtuneError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_combinations_that_make_no_sense_are_refused_in_one_line(
    trained: dict[str, Path], tiny_base: str, tmp_path: Path
) -> None:
    model = trained["head"]
    refused(
        lambda: load_backbone(tiny_base, device="cpu", device_map="auto"), r"--device cpu with --device-map"
    )
    refused(
        lambda: load_backbone(tiny_base, dtype="int8", device_map="auto"), r"--dtype int8 with --device-map"
    )
    refused(lambda: load_backbone(tiny_base, max_memory="0=1GiB"), r"--max-memory: bounds a --device-map")
    refused(
        lambda: load_backbone(tiny_base, device_map={"": "cpu"}, max_memory="cpu=1GiB"),
        r"--max-memory with a --device-map file",
    )
    shared = load_backbone(tiny_base, dtype="fp32", device="cpu")
    refused(
        lambda: Classifier.load(model, backbone=shared, device_map="auto"),
        r"device_map places a base this call loads",
    )
    # Offloading leaves weights away from where LoRA would sit beside them.
    refused(lambda: parse_device_map({"": "disk"}), r"'disk' offloads weights")
    refused(
        lambda: parse_device_map({"model.layers.0": 0, "lm_head": "cpu"}), r"'lm_head': 'cpu' beside GPUs"
    )
    offloaded = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta"))
    refused(lambda: check_placement(offloaded, "b"), r"does not fit the GPUs' memory; .* offloaded 1, which")
    check_placement(torch.nn.Linear(2, 2), "b")  # nothing offloaded


def test_malformed_maps_and_memory_bounds_name_what_is_wrong(tmp_path: Path) -> None:
    refused(lambda: parse_device_map("fastest"), r"--device-map: expected auto, balanced, .* found 'fastest'")
    bad = tmp_path / "map.json"
    bad.write_text("[1, 2]")
    refused(lambda: parse_device_map(str(bad)), rf"{bad}: expected a JSON object")
    bad.write_text('{"model.layers.0": "gpu7"}')
    refused(lambda: parse_device_map(str(bad)), rf"{bad}: key 'model.layers.0': expected a device")
    bad.write_text("{oops")
    refused(lambda: parse_device_map(str(bad)), rf"--device-map {bad}: not JSON")
    assert parse_device_map({"a": "0", "b": "cuda:1", "c": 2}) == {"a": 0, "b": "cuda:1", "c": 2}
    assert parse_max_memory("0=20GiB, 1=18GiB,cpu=30GB") == {0: "20GiB", 1: "18GiB", "cpu": "30GB"}
    refused(lambda: parse_max_memory("0:20GiB"), r"--max-memory: expected DEVICE=SIZE")
    refused(lambda: parse_max_memory("gpu=20GiB"), r"--max-memory: expected DEVICE=SIZE")


def test_ray_engine_refuses_a_device_map(
    monkeypatch: pytest.MonkeyPatch,
    trained: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["predict", "--model", trained["head"], "--data", tmp_path, "--out", tmp_path / "o"]
    assert run_cli(monkeypatch, *args, "--engine", "ray", "--device-map", "auto") == 1
    assert "--device-map: supported with --engine local only" in capsys.readouterr().err
