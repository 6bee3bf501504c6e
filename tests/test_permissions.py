"""Written files and directories get the modes plain open() / mkdir() give under the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from guardtune.api import Classifier, predict_file, train
from guardtune.atomic import atomic_dir, current_umask
from guardtune.data.writers import write_table
from guardtune.task import load_task
from guardtune.train import TrainSettings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_current_umask_reads_the_process_umask(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask  # reading it left it unchanged


def test_a_new_file_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(umask: int, tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    for name in ("out.csv", "out.jsonl", "out.parquet"):
        path = write_table(frame, tmp_path / "new" / name)
        assert mode(path) == 0o666 & ~umask
        assert mode(path.parent) == 0o777 & ~umask
        os.chmod(path, 0o604)
        write_table(frame, path)
        assert mode(path) == 0o604


def test_an_atomic_directory_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(
    umask: int, tmp_path: Path
) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "file.txt").write_text("x")
    assert mode(target) == 0o777 & ~umask
    assert mode(target / "sub" / "file.txt") == 0o666 & ~umask
    os.chmod(target, 0o711)
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "file.txt").write_text("y")
    assert mode(target) == 0o711 and (target / "file.txt").read_text() == "y"


def test_a_trained_model_and_its_predictions_follow_the_umask(
    umask: int, tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "runs" / "pii"
    fast = TrainSettings(max_steps=2, batch_size=8, max_length=32, dtype="fp32")
    train(load_task("pii-intent"), toy_files["train"], out, base=tiny_base, settings=fast)
    written = [out, *out.rglob("*")]
    assert {p.name for p in written} >= {"guardtune.json", "adapter_model.safetensors", "head.safetensors"}
    for path in written:
        assert mode(path) == (0o777 if path.is_dir() else 0o666) & ~umask, path
    predictions = tmp_path / "predictions.csv"
    predict_file(Classifier.load(out, dtype="fp32"), toy_files["test"], predictions)
    assert mode(predictions) == 0o666 & ~umask
