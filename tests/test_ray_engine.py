"""``guardtune predict --engine ray`` on a local 2-CPU Ray: the same rows and columns as the local
engine, and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli, toy_rows

from guardtune.api import Classifier, predict_file, train
from guardtune.engines.ray_predict import RaySettings
from guardtune.train import TrainSettings

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One Ray instance for the module; the engine joins it instead of starting its own."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tiny_base: str, toy_files: dict[str, Path]) -> Path:
    out = tmp_path_factory.mktemp("ray-model") / "model"
    settings = TrainSettings(max_steps=3, batch_size=8, max_length=32, dtype="fp32")
    train("pii-intent", toy_files["train"], out, val_path=toy_files["val"], base=tiny_base, settings=settings)
    return out


def _inputs() -> pd.DataFrame:
    """Rows with a gold label, an id whose leading zeros must survive, and an empty note cell."""
    frame = toy_rows(40, 7)
    frame.insert(0, "id", [f"{i:03d}" for i in range(len(frame))])
    frame["note"] = ["" if i % 3 else "x" for i in range(len(frame))]
    return frame


def _ray_output(directory: Path, fmt: str) -> pd.DataFrame:
    files = sorted(directory.glob(f"*.{fmt}"))
    assert files, f"no {fmt} part files in {directory}"
    if fmt == "csv":
        frames = [pd.read_csv(f, dtype=str, keep_default_na=False) for f in files]
    else:
        frames = [pd.read_parquet(f) for f in files]
    return pd.concat(frames, ignore_index=True)


def _assert_same_rows(local: pd.DataFrame, ray: pd.DataFrame) -> None:
    assert list(ray.columns) == list(local.columns)
    assert len(ray) == len(local)
    scores = [c for c in local.columns if c.startswith("score_")]
    text = [c for c in local.columns if c not in scores]
    assert ray[text].astype(str).values.tolist() == local[text].astype(str).values.tolist()
    pd.testing.assert_frame_equal(
        ray[scores].astype(float), local[scores].astype(float), check_exact=False, atol=2e-6, rtol=0
    )


def test_ray_engine_writes_what_local_predict_writes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, local_ray: None, model: Path
) -> None:
    rows = _inputs()
    whole = tmp_path / "whole.csv"
    rows.to_csv(whole, index=False)
    parts = tmp_path / "parts"
    parts.mkdir()
    rows.iloc[:25].to_csv(parts / "a.csv", index=False)
    rows.iloc[25:].to_csv(parts / "b.csv", index=False)
    predict_file(Classifier.load(model, dtype="fp32"), whole, tmp_path / "local.csv", progress=False)
    local = pd.read_csv(tmp_path / "local.csv", dtype=str, keep_default_na=False)
    assert {"id", "label_input", "label", "score_none"} <= set(local.columns)

    common = ["predict", "--engine", "ray", "--model", model, "--dtype", "fp32", "--batch-size", "8"]
    csv_out = tmp_path / "csv"
    assert (
        run_cli(monkeypatch, *common, "--data", whole, "--out", csv_out, "--format", "csv", "--actors", "1")
        == 0
    )
    _assert_same_rows(local, _ray_output(csv_out, "csv"))

    # A directory of files, in file-name order, into Parquet; forward passes of 16 tokens at most.
    budget = ["--max-batch-tokens", "16"]
    assert (
        run_cli(monkeypatch, *common, "--data", parts, "--out", tmp_path / "pq", "--actors", "2", *budget)
        == 0
    )
    from_parquet = _ray_output(tmp_path / "pq", "parquet")
    assert from_parquet["id"].tolist()[:3] == ["000", "001", "002"]  # CSV cells stay text
    _assert_same_rows(local, from_parquet)
    assert not list(tmp_path.glob(".*.tmp"))


def test_ray_engine_reports_a_bad_row_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    local_ray: None,
    model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["fine text", "  "]}).to_csv(data, index=False)
    args = ["--engine", "ray", "--actors", "1", "--model", model, "--data", data, "--out", tmp_path / "o"]
    assert run_cli(monkeypatch, "predict", *args) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("error:") and "empty text" in message and "\n" not in message
    assert not (tmp_path / "o").exists()


def test_ray_engine_without_ray_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    data = tmp_path / "in.csv"
    pd.DataFrame({"text": ["hello"]}).to_csv(data, index=False)
    code = run_cli(
        monkeypatch, "predict", "--engine", "ray", "--model", model, "--data", data, "--out", tmp_path / "o"
    )
    assert code == 1
    assert "pip install 'guardtune[ray]'" in capsys.readouterr().err


def test_ray_engine_refuses_a_non_empty_out_and_unknown_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "in.csv"
    pd.DataFrame({"text": ["hello"]}).to_csv(data, index=False)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    common = ["predict", "--model", model, "--data", data]
    assert run_cli(monkeypatch, *common, "--engine", "ray", "--out", taken) == 1
    assert "already exists" in capsys.readouterr().err
    assert (taken / "keep.txt").read_text() == "mine"
    assert run_cli(monkeypatch, *common, "--engine", "ray", "--out", tmp_path / "o", "--format", "xlsx") == 1
    assert "--format: expected parquet or csv" in capsys.readouterr().err
    assert run_cli(monkeypatch, *common, "--engine", "spark", "--out", tmp_path / "o") == 1
    assert "--engine: expected local or ray" in capsys.readouterr().err


def test_ray_settings_reject_a_negative_token_budget() -> None:
    from guardtune.errors import GuardtuneError

    with pytest.raises(GuardtuneError, match=r"--max-batch-tokens: expected 0 \(no limit\) or a positive"):
        RaySettings(max_batch_tokens=-5)
    assert RaySettings(max_batch_tokens=0).max_batch_tokens is None
