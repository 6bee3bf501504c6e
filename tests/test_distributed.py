"""Data-parallel training: ``accelerate launch`` / ``torchrun`` on 2 CPU processes (gloo) trains the
same weights as one process with the same global batch, and an interrupted run resumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from conftest import toy_rows
from safetensors.torch import load_file
from torch.utils.data import BatchSampler
from transformers.trainer_pt_utils import LengthGroupedSampler

from guardtune.cli import main
from guardtune.train import GlobalBatchSampler

TESTS = Path(__file__).parent
WEIGHT_FILES = ("adapter_model.safetensors", "head.safetensors")
MODEL_FILES = {"README.md", "adapter_config.json", "guardtune.json", *WEIGHT_FILES}
GLOBAL_BATCH = 8
MAX_STEPS = 12  # 64 rows / 8 per step: 8 steps per epoch, so the runs cross an epoch boundary
SAVE_STEPS = 10


def _global_batches(
    sampler: torch.utils.data.Sampler[int], per_device: int, processes: int
) -> list[list[int]]:
    """Rows of each optimizer step when accelerate shards ``sampler`` over ``processes`` as the
    Trainer's prepared data loader does."""
    batches = BatchSampler(sampler, per_device, drop_last=False)
    shards = [
        list(BatchSamplerShard(batches, num_processes=processes, process_index=r)) for r in range(processes)
    ]
    steps = min(len(shard) for shard in shards)
    return [sorted(i for shard in shards for i in shard[step]) for step in range(steps)]


def test_sampler_order_depends_on_the_global_batch_only() -> None:
    lengths = [(7 * i) % 23 + 3 for i in range(96)]
    sampler = GlobalBatchSampler(lengths, global_batch=GLOBAL_BATCH, seed=5)
    one = _global_batches(sampler, per_device=8, processes=1)
    two = _global_batches(sampler, per_device=4, processes=2)
    four = _global_batches(sampler, per_device=2, processes=4)
    assert one == two == four
    assert sorted(i for batch in one for i in batch) == list(range(96))
    # Each epoch reshuffles, reproducibly.
    sampler.set_epoch(1)
    epoch_one = list(sampler)
    assert epoch_one != list(GlobalBatchSampler(lengths, GLOBAL_BATCH, seed=5))
    assert epoch_one == list(GlobalBatchSampler(lengths, GLOBAL_BATCH, seed=6))
    # The Trainer's own sampler groups by the per-process batch, which is why it is replaced.
    torch.manual_seed(0)
    per_process = LengthGroupedSampler(4, lengths=lengths)
    torch.manual_seed(0)
    whole = LengthGroupedSampler(8, lengths=lengths)
    assert _global_batches(per_process, 4, 2) != _global_batches(whole, 8, 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _train_args(data: dict[str, Path], base: str, out: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        "train",
        "--task",
        "pii-intent",
        "--train",
        str(data["train"]),
        "--val",
        str(data["val"]),
        "--out",
        str(out),
        "--base",
        base,
        "--max-steps",
        str(MAX_STEPS),
        "--save-steps",
        str(SAVE_STEPS),
        "--batch-size",
        str(batch_size),
        "--max-length",
        "32",
        "--lr",
        "1e-3",
        "--lora-dropout",
        "0",
        "--dtype",
        "fp32",
        *extra,
    ]


def _launch(
    launcher: str, script: list[str], args: list[str], **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (``-m guardtune`` or a file) on 2 CPU processes with ``launcher``."""
    if launcher == "accelerate":
        # `--cpu` alone starts one process unless MPI is set up; `--multi_gpu` selects torch's
        # elastic launcher, which runs on CPUs with gloo when no GPU is present.
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        command += ["--main_process_port", str(_free_port())]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run(
        [*command, *script, *args], capture_output=True, text=True, env=environment, timeout=240, check=False
    )


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return {f"{name}:{key}": t for name in WEIGHT_FILES for key, t in load_file(directory / name).items()}


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = _weights(a), _weights(b)
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("distributed-data")
    paths = {"train": folder / "train.csv", "val": folder / "val.csv"}
    toy_rows(64, 1).to_csv(paths["train"], index=False)
    toy_rows(16, 2).to_csv(paths["val"], index=False)
    return paths


@pytest.fixture(scope="module")
def two_process_model(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, Path], tiny_base: str
) -> Path:
    """An uninterrupted 2-process run, 4 rows per process (global batch 8)."""
    out = tmp_path_factory.mktemp("two-process") / "model"
    done = _launch("accelerate", ["-m", "guardtune"], _train_args(data, tiny_base, out, GLOBAL_BATCH // 2))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Trained 12 steps on 2 processes") == 1, done.stdout
    assert done.stdout.count("Validation") == 1  # the other process reports nothing
    return out


def test_two_processes_train_the_same_weights_as_one(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    data: dict[str, Path],
    tiny_base: str,
    two_process_model: Path,
) -> None:
    # Only the main process wrote: the model directory and nothing else next to it.
    assert {p.name for p in two_process_model.iterdir()} == MODEL_FILES
    assert [p.name for p in two_process_model.parent.iterdir()] == ["model"]
    training = json.loads((two_process_model / "guardtune.json").read_text())["training"]
    assert (training["processes"], training["global_batch_size"], training["steps"]) == (2, 8, 12)

    one = tmp_path / "one"
    monkeypatch.setattr(sys, "argv", ["guardtune", *_train_args(data, tiny_base, one, GLOBAL_BATCH)])
    main()
    assert json.loads((one / "guardtune.json").read_text())["training"]["processes"] == 1
    _assert_same_weights(one, two_process_model)
    # The comparison can fail: LoRA B starts at zero and training moved it far beyond the tolerance.
    lora_b = [t for key, t in _weights(one).items() if "lora_B" in key]
    assert lora_b and max(t.abs().max().item() for t in lora_b) > 1e-3


def test_interrupted_two_process_run_resumes_to_the_same_weights(
    tmp_path: Path, data: dict[str, Path], tiny_base: str, two_process_model: Path
) -> None:
    out = tmp_path / "model"
    args = _train_args(data, tiny_base, out, GLOBAL_BATCH // 2)
    stopped = _launch(
        "torchrun", [str(TESTS / "interrupted_train.py")], args, GUARDTUNE_STOP_AT=str(SAVE_STEPS)
    )
    assert stopped.returncode != 0
    work_dir = tmp_path / "model.incomplete"
    assert (work_dir / f"checkpoint-{SAVE_STEPS}" / "model.safetensors").is_file(), stopped.stderr[-3000:]
    assert not out.exists()

    resumed = _launch("torchrun", ["-m", "guardtune"], [*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("Trained 12 steps on 2 processes") == 1, resumed.stdout
    assert not work_dir.exists()
    assert json.loads((out / "guardtune.json").read_text())["training"]["steps"] == MAX_STEPS
    _assert_same_weights(out, two_process_model)
