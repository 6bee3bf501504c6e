"""``--device``, the dtype it implies and ``--gradient-checkpointing``, through the code path a GPU
takes: the device comes from the option (CUDA is simulated where only its presence matters)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

import guardtune.backbone as backbone_module
from guardtune.backbone import load_backbone, resolve_device, resolve_dtype
from guardtune.errors import GuardtuneError
from guardtune.methods import LoraSettings, get_method
from guardtune.serve import load_guards
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings, fit

TASK = task_from_dict({**load_task("pii-intent").to_dict(), "template": "{text}\nAnswer:"})


def fake_cuda(monkeypatch: pytest.MonkeyPatch, present: bool, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)


def test_auto_is_cuda_when_torch_sees_a_gpu_and_the_cpu_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, present=True)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    fake_cuda(monkeypatch, present=False)
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_a_gpu_and_unknown_devices_are_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_cuda(monkeypatch, present=False)
    with pytest.raises(GuardtuneError, match=r"--device cuda: torch .* sees no CUDA device") as error:
        resolve_device("cuda")
    assert "\n" not in str(error.value)
    with pytest.raises(GuardtuneError, match="--device: expected auto, cpu or cuda, found 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(GuardtuneError, match="--device: expected auto, cpu or cuda"):
        TrainSettings(device="mps")


def test_auto_dtype_is_bf16_only_where_the_device_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    fake_cuda(monkeypatch, present=True, bf16=True)
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    fake_cuda(monkeypatch, present=True, bf16=False)  # a pre-Ampere GPU
    assert resolve_dtype("auto", cuda) == torch.float32
    assert resolve_dtype("bf16", cuda) == torch.bfloat16
    # The CPU follows its own bf16 support, whatever the GPU does.
    monkeypatch.setattr(backbone_module, "cpu_supports_bf16", lambda: False)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(backbone_module, "cpu_supports_bf16", lambda: True)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16


def test_cli_device_option_reaches_train_eval_predict_and_serve(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_base: str, toy_files: dict[str, Path]
) -> None:
    asked: list[str] = []
    real = backbone_module.resolve_device

    def spy(name: str = "auto") -> torch.device:
        asked.append(name)
        return real(name)

    monkeypatch.setattr(backbone_module, "resolve_device", spy)
    model = tmp_path / "model"
    tiny = ["--max-steps", "2", "--batch-size", "8", "--max-length", "32", "--dtype", "fp32"]
    train = [
        "train",
        "--task",
        "pii-intent",
        "--train",
        toy_files["val"],
        "--out",
        model,
        "--base",
        tiny_base,
    ]
    assert run_cli(monkeypatch, *train, *tiny, "--device", "cpu", "--gradient-checkpointing") == 0
    training = json.loads((model / "guardtune.json").read_text())["training"]
    assert training["device"] == "cpu" and training["gradient_checkpointing"] is True
    data = toy_files["test"]
    assert (
        run_cli(
            monkeypatch,
            "predict",
            "--model",
            model,
            "--data",
            data,
            "--out",
            tmp_path / "p.csv",
            "--device",
            "cpu",
        )
        == 0
    )
    assert (
        run_cli(
            monkeypatch, "eval", "--model", model, "--data", data, "--out", tmp_path / "r", "--device", "cpu"
        )
        == 0
    )
    guards = load_guards({"pii": model}, dtype="fp32", device="cpu")
    assert guards["pii"].backbone.device.type == "cpu"
    assert asked == ["cpu"] * 4


def test_cli_refuses_cuda_where_there_is_none(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_base: str,
    toy_files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_cuda(monkeypatch, present=False)
    train = ["train", "--task", "pii-intent", "--train", toy_files["val"], "--out", tmp_path / "m"]
    assert run_cli(monkeypatch, *train, "--base", tiny_base, "--device", "cuda", "--max-steps", "1") == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: --device cuda:") and "\n" not in message
    assert not (tmp_path / "m").exists()


def _train_two_steps(base: str, work: Path, checkpointing: bool) -> tuple[int, dict[str, torch.Tensor]]:
    """Two steps of the head method; how often decoder layer 0's MLP ran, and the trained tensors."""
    backbone = load_backbone(base, dtype="fp32", device="cpu")
    torch.manual_seed(0)
    method = get_method("head").create(backbone, TASK, LoraSettings(r=4, dropout=0.0), 32)
    calls = []
    layer = backbone.model.get_decoder().layers[0].mlp
    hook = layer.register_forward_hook(lambda *args: calls.append(1))
    texts = ["whats ur snap", "gg nice game", "my number is here", "where do u live"] * 4
    labels = ["asking", "none", "giving", "asking"] * 4
    settings = TrainSettings(
        max_steps=2,
        batch_size=8,
        learning_rate=1e-2,
        max_length=32,
        dtype="fp32",
        device="cpu",
        gradient_checkpointing=checkpointing,
        lora=LoraSettings(r=4, dropout=0.0),
    )
    fit(method, texts, labels, settings, work)
    hook.remove()
    assert not backbone.model.is_gradient_checkpointing  # the backbone goes back as it was
    return len(calls), {k: v.clone() for k, v in method.trainable_state_dict().items()}


def test_gradient_checkpointing_recomputes_layers_and_trains_the_same(tiny_base: str, tmp_path: Path) -> None:
    plain_calls, plain = _train_two_steps(tiny_base, tmp_path / "plain", checkpointing=False)
    checkpointed_calls, checkpointed = _train_two_steps(tiny_base, tmp_path / "ckpt", checkpointing=True)
    assert plain_calls == 2  # one forward pass per step
    assert checkpointed_calls == 4  # and one recomputation in each backward pass
    assert plain.keys() == checkpointed.keys()
    for name, tensor in plain.items():
        torch.testing.assert_close(checkpointed[name], tensor, rtol=1e-5, atol=1e-6)
