"""Every file of a model directory that fails to load gives one line naming the file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file

from guardtune.api import Classifier, calibrate, train
from guardtune.errors import GuardtuneError
from guardtune.task import load_task
from guardtune.train import TrainSettings

Corrupt = Callable[[Path], None]


@pytest.fixture(scope="module")
def model_dirs(tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("modeldirs")
    fast = TrainSettings(max_steps=2, batch_size=8, max_length=160, dtype="fp32")
    task = load_task("pii-intent")
    for method in ("head", "label-tokens"):
        train(task, toy_files["train"], root / method, base=tiny_base, method=method, settings=fast)
    calibrate(root / "head", toy_files["val"], dtype="fp32")
    assert (root / "head" / "calibration.json").is_file()
    return {"head": root / "head", "label-tokens": root / "label-tokens"}


def truncate(name: str) -> Corrupt:
    def apply(directory: Path) -> None:
        path = directory / name
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])

    return apply


def remove(name: str) -> Corrupt:
    return lambda directory: (directory / name).unlink()


def edit_json(name: str, change: Callable[[dict], object]) -> Corrupt:
    def apply(directory: Path) -> None:
        path = directory / name
        raw = json.loads(path.read_text())
        replaced = change(raw)
        path.write_text(json.dumps(raw if replaced is None else replaced))

    return apply


def edit_tensors(name: str, change: Callable[[dict[str, torch.Tensor]], None]) -> Corrupt:
    def apply(directory: Path) -> None:
        path = directory / name
        tensors = load_file(str(path))
        change(tensors)
        save_file(tensors, str(path))

    return apply


def _widen_lora_a(tensors: dict[str, torch.Tensor]) -> None:
    key = next(k for k in sorted(tensors) if "lora_A" in k)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])


def _drop_lora_b(tensors: dict[str, torch.Tensor]) -> None:
    del tensors[next(k for k in sorted(tensors) if "lora_B" in k)]


def _add_label(directory: Path) -> None:
    (directory / "calibration.json").unlink()  # it names the labels too, and is checked first
    edit_json("guardtune.json", lambda r: r["task"]["labels"].update(other="a fourth label"))(directory)


MANIFEST, CONFIG, HEAD = "guardtune.json", "adapter_config.json", "head.safetensors"
ADAPTER = "adapter_model.safetensors"
# (model, file, corruption, what the one line says besides the file's name)
CASES: dict[str, tuple[str, str, Corrupt, str]] = {
    "manifest missing": ("head", MANIFEST, remove(MANIFEST), "not a guardtune model directory"),
    "manifest truncated": ("head", MANIFEST, truncate(MANIFEST), "not valid JSON"),
    "manifest not an object": ("head", MANIFEST, edit_json(MANIFEST, lambda r: [r]), "object"),
    "manifest wrong type": (
        "head",
        MANIFEST,
        edit_json(MANIFEST, lambda r: r.update(max_length="long")),
        "key 'max_length': expected an integer",
    ),
    "manifest unknown method": (
        "head",
        MANIFEST,
        edit_json(MANIFEST, lambda r: r.update(method="bogus")),
        "key 'method': unknown method 'bogus'",
    ),
    "manifest bad task": (
        "head",
        MANIFEST,
        edit_json(MANIFEST, lambda r: r["task"].update(mode="several")),
        "task",
    ),
    "label count differs from the head": (
        "head",
        HEAD,
        _add_label,
        "do not match the task",
    ),
    "adapter config missing": ("head", CONFIG, remove(CONFIG), "missing"),
    "adapter config truncated": ("head", CONFIG, truncate(CONFIG), "not valid JSON"),
    "adapter config not LoRA": (
        "head",
        CONFIG,
        edit_json(CONFIG, lambda r: r.update(peft_type="IA3")),
        "expected 'LORA'",
    ),
    "adapter config bad value": (
        "head",
        CONFIG,
        edit_json(CONFIG, lambda r: r.update(r="sixteen")),
        "key 'r': expected a positive integer, found 'sixteen'",
    ),
    "adapter weights missing": ("head", ADAPTER, remove(ADAPTER), "missing"),
    "adapter weights truncated": ("head", ADAPTER, truncate(ADAPTER), "not a complete safetensors file"),
    "adapter weights wrong shape": (
        "head",
        ADAPTER,
        edit_tensors(ADAPTER, _widen_lora_a),
        "does not fit",
    ),
    "adapter weights lack a tensor": ("head", ADAPTER, edit_tensors(ADAPTER, _drop_lora_b), "tensors"),
    "head missing": ("head", HEAD, remove(HEAD), "missing"),
    "head truncated": ("head", HEAD, truncate(HEAD), "not a complete safetensors"),
    "head wrong shape": (
        "head",
        HEAD,
        edit_tensors(HEAD, lambda t: t.update(weight=torch.zeros(3, 7))),
        "do not match",
    ),
    "calibration truncated": ("head", "calibration.json", truncate("calibration.json"), "not valid JSON"),
    "label tokens missing": ("label-tokens", "label_tokens.json", remove("label_tokens.json"), "missing"),
    "label tokens truncated": ("label-tokens", "label_tokens.json", truncate("label_tokens.json"), "JSON"),
    "label tokens changed": (
        "label-tokens",
        "label_tokens.json",
        edit_json("label_tokens.json", lambda r: r.update(token_ids=[1, 2, 3])),
        "differ",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_corrupt_file_gives_one_line_naming_it(
    case: str, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model, name, corrupt, expected = CASES[case]
    directory = tmp_path / "model"
    shutil.copytree(model_dirs[model], directory)
    corrupt(directory)
    with pytest.raises(GuardtuneError) as caught:
        Classifier.load(directory, dtype="fp32")
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    assert name in message and expected in message, message


def test_the_cli_prints_a_corrupt_file_in_one_line(
    model_dirs: dict[str, Path],
    toy_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory = tmp_path / "model"
    shutil.copytree(model_dirs["head"], directory)
    truncate(ADAPTER)(directory)
    args = ["--model", directory, "--data", toy_files["test"], "--out", tmp_path / "p.csv"]
    code = run_cli(monkeypatch, "predict", *args)
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the base's loading bar
    assert code == 1
    assert last.startswith(f"error: {directory / ADAPTER}: not a complete safetensors file"), last
