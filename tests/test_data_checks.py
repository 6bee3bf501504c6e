"""Training-data sanity: missing labels stop training, thin labels warn."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli, toy_rows

from guardtune.data.checks import check_training_labels
from guardtune.errors import GuardtuneError
from guardtune.task import load_task, task_from_dict

INTENT = load_task("pii-intent")
MULTI = task_from_dict({"name": "cats", "mode": "multi", "labels": {"asking": "", "giving": ""}})


def test_a_single_label_task_missing_labels_is_an_error_naming_them() -> None:
    with pytest.raises(GuardtuneError) as caught:
        check_training_labels(INTENT, ["none"] * 14, "train.csv")
    message = str(caught.value)
    assert message.startswith(
        "train.csv: no training rows for label(s) 'asking', 'giving' of task pii-intent"
    )
    assert "--allow-missing-labels" in message and "\n" not in message


def test_allowing_missing_labels_turns_the_error_into_a_warning() -> None:
    warnings = check_training_labels(INTENT, ["none"] * 12 + ["giving"] * 12, "t.csv", allow_missing=True)
    assert warnings == [
        "t.csv: no training rows for label(s) 'asking' of task pii-intent; "
        "the model will not learn to predict them"
    ]


def test_a_label_with_fewer_than_ten_rows_warns() -> None:
    labels = ["none"] * 20 + ["asking"] * 9 + ["giving"] * 10
    assert check_training_labels(INTENT, labels, "t.csv") == [
        "t.csv: fewer than 10 training rows for label(s) 'asking' 9; expect weak scores on them"
    ]
    assert check_training_labels(INTENT, ["none"] * 10 + ["asking"] * 10 + ["giving"] * 10, "t.csv") == []


def test_a_multi_label_task_warns_on_a_label_without_positives() -> None:
    labels: list[list[str]] = [[]] * 20 + [["asking"]] * 12
    assert check_training_labels(MULTI, labels, "m.csv") == [
        "m.csv: no positive rows for label(s) 'giving' of task cats; the model will not learn to flag them"
    ]


def test_train_command_refuses_one_label_data_unless_allowed(
    tiny_base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "none.csv"
    frame = toy_rows(42, seed=5)
    frame[frame["label"] == "none"].to_csv(data, index=False)
    assert len(pd.read_csv(data)) == 14
    common = [
        "--task",
        "pii-intent",
        "--train",
        data,
        "--base",
        tiny_base,
        "--max-steps",
        "1",
        "--dtype",
        "fp32",
    ]
    assert run_cli(monkeypatch, "train", *common, "--out", tmp_path / "m") == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {data}: no training rows for label(s) 'asking', 'giving' of task pii-intent (the model "
        "could never predict them; add rows, or pass --allow-missing-labels to train anyway)"
    )
    assert not (tmp_path / "m").exists()

    assert run_cli(monkeypatch, "train", *common, "--out", tmp_path / "m", "--allow-missing-labels") == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: " + f"{data}: no training rows for label(s) 'asking', 'giving'" in err
    assert "fewer than 10 training rows for label(s) 'none' 14" not in err  # 14 rows are enough
    assert (tmp_path / "m" / "guardtune.json").is_file()
