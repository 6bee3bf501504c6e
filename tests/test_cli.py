"""The CLI end to end on a tiny model, and its one-line errors."""

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

METRIC_KEYS = {
    "n",
    "accuracy",
    "micro_f1",
    "macro_f1",
    "weighted_f1",
    "per_class",
    "confusion_matrix",
}


def train_intent(monkeypatch: pytest.MonkeyPatch, data: Path, out: Path, *options: object) -> int:
    """``guardtune train --task pii-intent --train DATA --out OUT OPTIONS...``; its exit code."""
    return run_cli(monkeypatch, "train", "--task", "pii-intent", "--train", data, "--out", out, *options)


def test_synth_train_eval_predict(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_base: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "synth.csv"
    synth = ["data", "synth", "--task", "pii-intent", "--n", "90", "--seed", "1", "--out", data]
    assert run_cli(monkeypatch, *synth) == 0
    assert len(pd.read_csv(data)) == 90

    model = tmp_path / "model"
    tiny = ["--max-steps", "4", "--batch-size", "8", "--max-length", "32", "--dtype", "fp32"]
    assert train_intent(monkeypatch, data, model, "--base", tiny_base, *tiny) == 0
    assert (model / "guardtune.json").is_file()
    manifest = json.loads((model / "guardtune.json").read_text())
    assert manifest["method"] == "head" and manifest["base"] == tiny_base
    assert manifest["training"]["counts"]["train"]["none"] > 0

    report = tmp_path / "report"
    assert run_cli(monkeypatch, "eval", "--model", model, "--data", data, "--out", report) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS and metrics["n"] == 90
    for name in ("report.md", "confusion_matrix.png", "precision_recall.png", "errors.csv"):
        assert (report / name).stat().st_size > 0
    errors = pd.read_csv(report / "errors.csv")
    assert len(errors) == round((1 - metrics["accuracy"]) * 90)
    # Synthetic rows carry their template family: eval breaks the figures down by it.
    families = pd.read_csv(data)["family"]
    groups = metrics["groups"]
    assert groups["column"] == "family" and set(groups["metrics"]) == set(families)
    assert sum(g["n"] for g in groups["metrics"].values()) == 90
    assert groups["weakest"] == min(groups["metrics"], key=lambda g: groups["metrics"][g]["accuracy"])
    assert (report / "groups.png").stat().st_size > 0
    assert "## By family" in (report / "report.md").read_text()
    capsys.readouterr()
    assert (
        run_cli(monkeypatch, "eval", "--model", model, "--data", data, "--out", report, "--group-by", "src")
        == 1
    )
    assert "no column 'src' to group by (found columns: text, label, family)" in capsys.readouterr().err

    inputs = tmp_path / "in.jsonl"
    pd.DataFrame({"text": ["whats ur snap?", "gg"], "id": [7, 8]}).to_json(
        inputs, orient="records", lines=True
    )
    out = tmp_path / "out.csv"
    assert run_cli(monkeypatch, "predict", "--model", model, "--data", inputs, "--out", out) == 0
    predicted = pd.read_csv(out)
    assert list(predicted.columns) == [
        "text",
        "id",
        "label",
        "score_none",
        "score_asking",
        "score_giving",
    ]
    assert predicted["label"].isin(["none", "asking", "giving"]).all()
    sums = predicted[["score_none", "score_asking", "score_giving"]].sum(axis=1)
    assert (abs(sums - 1) < 1e-4).all()
    # A token budget smaller than one message: a pass per message, the same scores.
    one_at_a_time = tmp_path / "one.csv"
    budget = ["--max-batch-tokens", "2"]
    assert (
        run_cli(monkeypatch, "predict", "--model", model, "--data", inputs, "--out", one_at_a_time, *budget)
        == 0
    )
    pd.testing.assert_frame_equal(pd.read_csv(one_at_a_time), predicted, atol=1e-5)
    capsys.readouterr()
    budget = ["--max-batch-tokens", "-1"]
    assert (
        run_cli(monkeypatch, "predict", "--model", model, "--data", inputs, "--out", one_at_a_time, *budget)
        == 1
    )
    assert (
        "--max-batch-tokens: expected 0 (no limit) or a positive integer, found -1" in capsys.readouterr().err
    )

    # An existing output directory is not overwritten by accident.
    capsys.readouterr()
    assert train_intent(monkeypatch, data, model, "--base", tiny_base) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["train", "--task", "nope", "--train", "x.csv", "--out", "m"],
            "no such task file and not a built-in task",
        ),
        (
            ["eval", "--model", "absent-dir", "--data", "x.csv", "--out", "r"],
            "absent-dir: no such model directory",
        ),
        (["data", "synth", "--task", "moderation", "--n", "5", "--out", "x.csv"], "moderation"),
        (["validate", "missing.yaml"], "missing.yaml: no such task file"),
        (
            ["train", "--task", "pii-intent", "--train", "x.csv", "--out", "m", "--epochs", "0"],
            "--epochs: expected a positive number",
        ),
        (
            ["train", "--task", "pii-intent", "--train", "x.csv", "--out", "m", "--lora-targets", " , "],
            "--lora-targets: expected module names",
        ),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.csv").write_text("text,label\nhi,none\n")
    assert run_cli(monkeypatch, *args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:")
    assert expected in err
    assert len(err.splitlines()) == 1


def test_train_with_bad_label_leaves_no_output(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tiny_base: str,
) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("text,label\nhello,none\nwhats ur snap,askin\n")
    assert train_intent(monkeypatch, data, tmp_path / "m", "--base", tiny_base) == 1
    assert "bad.csv: row 3: unknown label 'askin'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_validate_and_methods_list(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(monkeypatch, "validate", "pii-categories") == 0
    assert "OK (multi-label" in capsys.readouterr().out
    assert run_cli(monkeypatch, "methods") == 0
    assert "head" in capsys.readouterr().out


def test_data_split_and_stats(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "all.csv"
    assert run_cli(monkeypatch, "data", "synth", "--task", "pii-categories", "--n", "200", "--out", data) == 0
    assert (
        run_cli(
            monkeypatch, "data", "split", "--task", "pii-categories", "--data", data, "--out", tmp_path / "s"
        )
        == 0
    )
    sizes = {name: len(pd.read_csv(tmp_path / "s" / f"{name}.csv")) for name in ("train", "val", "test")}
    assert sizes == {"train": 160, "val": 20, "test": 20}
    capsys.readouterr()
    assert run_cli(monkeypatch, "data", "stats", "--task", "pii-categories", "--data", data) == 0
    printed = capsys.readouterr().out
    assert "S5" in printed and "safe" in printed and "200 rows" in printed


def test_label_then_distill_then_compare(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_base: str, toy_files: dict[str, Path]
) -> None:
    teacher = tmp_path / "teacher"
    common = ["--base", tiny_base, "--max-length", "32", "--dtype", "fp32", "--batch-size", "8"]
    assert train_intent(monkeypatch, toy_files["train"], teacher, "--max-steps", "3", *common) == 0
    soft = tmp_path / "soft.csv"
    assert run_cli(monkeypatch, "label", "--model", teacher, "--data", toy_files["val"], "--out", soft) == 0
    frame = pd.read_csv(soft)
    assert ((frame[["p_none", "p_asking", "p_giving"]].sum(axis=1) - 1).abs() < 1e-6).all()
    student = tmp_path / "student"
    assert train_intent(monkeypatch, soft, student, "--max-steps", "2", "--distill", "0.5,2", *common) == 0
    assert train_intent(monkeypatch, soft, tmp_path / "x", "--distill", "half", *common) == 1

    table = tmp_path / "compare"
    code = run_cli(
        monkeypatch,
        "compare",
        "--task",
        "pii-intent",
        "--train",
        toy_files["train"],
        "--val",
        toy_files["val"],
        "--test",
        toy_files["test"],
        "--out",
        table,
        "--methods",
        "head,label-tokens",
        "--max-steps",
        "2",
        "--base",
        tiny_base,
        "--dtype",
        "fp32",
        "--batch-size",
        "8",
    )
    assert code == 0
    rows = json.loads((table / "compare.json").read_text())
    assert [r["method"] for r in rows] == ["head", "label-tokens"]
    assert all(r["predict_messages_per_second"] > 0 and 0 <= r["macro_f1"] <= 1 for r in rows)
    assert "| head |" in (table / "compare.md").read_text()


# The training options `train` and `compare` share, each a value other than its default.
TRAINING_ARGS = [
    *("--epochs", "2", "--max-steps", "7", "--batch-size", "4", "--grad-accum", "3", "--lr", "0.002"),
    *("--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0.1", "--lora-targets", "q_proj, v_proj"),
    *("--save-steps", "5", "--max-length", "64", "--dtype", "fp32", "--device", "cpu"),
    *("--gradient-checkpointing", "--seed", "9", "--distill", "0.5,2", "--label-smoothing", "0.1"),
    *("--neftune-alpha", "5", "--readout", "eos"),
]


def captured_settings(monkeypatch: pytest.MonkeyPatch, command: str, *options: object) -> object:
    """The ``TrainSettings`` ``guardtune <command>`` hands to the API, without training anything."""
    import guardtune.api
    import guardtune.compare

    seen = []

    def fake_train(*args: object, settings: object, **kwargs: object) -> object:
        seen.append(settings)
        raise SystemExit(0)

    def fake_compare(*args: object, settings: object, **kwargs: object) -> list[object]:
        seen.append(settings)
        return []

    monkeypatch.setattr(guardtune.api, "train", fake_train)
    monkeypatch.setattr(guardtune.compare, "compare_methods", fake_compare)
    files = ["--train", "t.csv", "--out", "o"]
    if command == "compare":
        files += ["--val", "v.csv", "--test", "x.csv"]
    assert run_cli(monkeypatch, command, "--task", "pii-intent", *files, *options) == 0
    (settings,) = seen
    return settings


def test_compare_takes_the_training_options_train_takes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from guardtune.methods import LoraSettings
    from guardtune.train import TrainSettings

    expected = TrainSettings(
        epochs=2,
        max_steps=7,
        batch_size=4,
        gradient_accumulation=3,
        learning_rate=0.002,
        save_steps=5,
        max_length=64,
        dtype="fp32",
        device="cpu",
        gradient_checkpointing=True,
        seed=9,
        distill=(0.5, 2.0),
        label_smoothing=0.1,
        neftune_alpha=5.0,
        readout="eos",
        lora=LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"]),
    )
    assert captured_settings(monkeypatch, "compare", *TRAINING_ARGS) == expected
    assert captured_settings(monkeypatch, "train", *TRAINING_ARGS) == expected
    # Bad values fail the same way in both, before any file is read.
    for command in ("train", "compare"):
        capsys.readouterr()
        files = ["--train", "t.csv", "--out", "o"] + (
            ["--val", "v", "--test", "x"] if command == "compare" else []
        )
        assert run_cli(monkeypatch, command, "--task", "pii-intent", *files, "--grad-accum", "0") == 1
        assert "--grad-accum: expected a positive integer, found 0" in capsys.readouterr().err


def test_training_option_defaults_are_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer.main

    from guardtune.cli import app
    from guardtune.cli_options import TRAINING_OPTIONS, field_default
    from guardtune.methods.lora import DEFAULT_TARGETS
    from guardtune.train import TrainSettings

    # With no option given, both commands build exactly the dataclass defaults.
    assert captured_settings(monkeypatch, "train") == TrainSettings()
    assert captured_settings(monkeypatch, "compare") == TrainSettings()
    assert field_default("lora.target_modules") == list(DEFAULT_TARGETS)
    # What --help shows as each default is the field's own.
    group = typer.main.get_command(app)
    for command in ("train", "compare"):
        params = {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]
        for option in TRAINING_OPTIONS:
            shown = None if option.parse is not None else field_default(option.field)
            assert params[option.name].default == shown, (command, option.name)
    assert params["lr"].default == TrainSettings().learning_rate == 5e-4
    assert params["lora_r"].default == 16 and params["grad_accum"].default == 1
