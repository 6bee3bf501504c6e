"""``--int8-recheck``: texts whose int8 decision a small score change could flip are scored again
in float, and get the float model's scores; everything else keeps its int8 scores."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from guardtune import precision
from guardtune.api import Classifier, train
from guardtune.errors import GuardtuneError
from guardtune.infer import predict_scores
from guardtune.long_text import text_windows
from guardtune.recheck import Recheck, check_margin, unstable_rows
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings

needs_int8 = pytest.mark.skipif(
    precision.int8_unavailable_reason() is not None,
    reason=f"int8 cannot run here: {precision.int8_unavailable_reason()}",
)


@pytest.fixture(scope="module")
def model_dir(tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = TrainSettings(
        epochs=2, batch_size=16, learning_rate=3e-3, max_length=32, seed=11, dtype="fp32"
    )
    out = tmp_path_factory.mktemp("recheck") / "model"
    task = load_task("pii-intent")
    return train(task, toy_files["train"], out, base=tiny_base, settings=settings).directory


def _texts(toy_files: dict[str, Path]) -> list[str]:
    return pd.read_csv(toy_files["test"])["text"].tolist()


def _float_name(classifier: Classifier) -> str:
    # What the int8 model runs outside its projections (bf16 where the CPU has it natively).
    return classifier.method.backbone.float_precision


def test_a_near_tie_is_unstable_and_a_clear_decision_is_not() -> None:
    task = load_task("pii-intent")  # none, asking, giving; the most likely label decides
    scores = np.array(
        [
            [0.50, 0.46, 0.04],  # none and asking 0.04 apart
            [0.90, 0.06, 0.04],
            [0.10, 0.30, 0.60],  # giving ahead by 0.30
        ]
    )
    assert unstable_rows(task, scores, 0.05).tolist() == [True, False, False]
    # Two scores moving 0.16 apart each close a gap of 0.30.
    assert unstable_rows(task, scores, 0.16).tolist() == [True, False, True]


def test_scores_near_a_policy_threshold_are_unstable() -> None:
    single = task_from_dict(
        {
            "name": "t",
            "mode": "single",
            "labels": {"none": "n", "asking": "a", "giving": "g"},
            "policy": {"thresholds": {"asking": 0.2}},
        }
    )
    # asking wins at 0.2 although none is far ahead: 0.21 is near that threshold, 0.5 is not.
    scores = np.array([[0.77, 0.21, 0.02], [0.45, 0.50, 0.05], [0.97, 0.02, 0.01]])
    assert single.decide(scores) == ["asking", "asking", "none"]
    assert unstable_rows(single, scores, 0.03).tolist() == [True, False, False]
    multi = task_from_dict(
        {
            "name": "m",
            "mode": "multi",
            "labels": {"unsafe": "u", "hate": "h", "violence": "v"},
            "overall": "unsafe",
            "policy": {"thresholds": {"unsafe": 0.6}},
        }
    )
    # The overall score near its threshold, a category near its 0.5, and neither.
    scores = np.array([[0.62, 0.1, 0.1], [0.9, 0.48, 0.1], [0.9, 0.9, 0.1], [0.1, 0.52, 0.1]])
    assert unstable_rows(multi, scores, 0.05).tolist() == [True, True, False, False]


@pytest.mark.parametrize("margin", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_a_margin_outside_zero_and_one_is_refused(margin: float) -> None:
    with pytest.raises(GuardtuneError, match="--int8-recheck: expected a score margin between 0 and 1"):
        check_margin(margin)


@needs_int8
def test_rechecked_texts_get_the_float_models_scores(model_dir: Path, toy_files: dict[str, Path]) -> None:
    texts = _texts(toy_files)
    every = Classifier.load(model_dir, dtype="int8", int8_recheck=0.999)
    expected = Classifier.load(model_dir, dtype=_float_name(every)).predict_proba(texts, batch_size=8)
    # A margin of nearly 1 makes every decision unstable: all of them are the float model's.
    np.testing.assert_array_equal(every.predict_proba(texts, batch_size=8), expected)
    assert every.rechecked == len(texts)

    # The same model without the recheck: its int8 scores.
    int8_scores = predict_scores(every.method, texts, batch_size=8)
    assert np.abs(int8_scores - expected).max() > 0  # int8 rounding, or the test shows nothing

    # Only the rows the recheck picks are scored again; the rest keep their int8 scores.
    picked = np.zeros(len(texts), dtype=bool)
    picked[[0, 7, 30]] = True
    got = predict_scores(every.method, texts, batch_size=8, recheck=Recheck(0.5, lambda scores: picked))
    # (Batched on their own, so padded differently: equal up to float rounding.)
    np.testing.assert_allclose(got[picked], expected[picked], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got[~picked], int8_scores[~picked])
    # A tiny margin re-scores nothing.
    few = Classifier.load(model_dir, dtype="int8", int8_recheck=1e-9)
    few.predict_proba(texts, batch_size=8)
    assert few.rechecked == 0


@needs_int8
def test_a_text_read_in_windows_is_rechecked_whole(model_dir: Path, toy_files: dict[str, Path]) -> None:
    texts = _texts(toy_files)[:16]
    every = Classifier.load(model_dir, dtype="int8", int8_recheck=0.999)
    reference = Classifier.load(model_dir, dtype=_float_name(every))
    for classifier in (every, reference):
        classifier.long_text = "windows"
        classifier.method.max_length = 4  # BOS + 3 tokens: every text in several windows
    windows = sum(len(text_windows(every.method.backbone.tokenizer, t, 3)) for t in texts)
    assert windows > 2 * len(texts)
    expected = reference.predict_proba(texts, batch_size=8)
    np.testing.assert_array_equal(every.predict_proba(texts, batch_size=8), expected)
    assert every.rechecked == len(texts)  # texts, not windows
    # Clear decisions, but two windows flagged within twice the margin of each other: int8 could
    # pick the other one, so the text is re-scored whole.
    close = Recheck(0.2, lambda scores: np.zeros(len(scores), dtype=bool))
    predict_scores(every.method, texts, batch_size=8, long_text="windows", recheck=close)
    assert 0 < close.rescored <= len(texts)
    never = Recheck(1e-9, lambda scores: np.zeros(len(scores), dtype=bool))
    predict_scores(every.method, texts, batch_size=8, long_text="windows", recheck=never)
    assert never.rescored == 0


@needs_int8
def test_float_projections_are_switched_back_after_an_error(model_dir: Path) -> None:
    model = Classifier.load(model_dir, dtype="int8", int8_recheck=0.1).method.backbone.model
    layers = [m for m in model.modules() if isinstance(m, precision.Int8Linear)]
    with pytest.raises(RuntimeError), precision.float_projections(model):
        assert all(layer.run_float for layer in layers)
        raise RuntimeError("boom")
    assert not any(layer.run_float for layer in layers)


@needs_int8
def test_kept_float_weights_stay_out_of_the_parameters(model_dir: Path) -> None:
    plain = Classifier.load(model_dir, dtype="int8").method.backbone.model
    kept = Classifier.load(model_dir, dtype="int8", int8_recheck=0.1).method.backbone.model
    assert sum(p.numel() for p in kept.parameters()) == sum(p.numel() for p in plain.parameters())
    assert set(kept.state_dict()) == set(plain.state_dict())
    with pytest.raises(GuardtuneError, match="kept no float weights"), precision.float_projections(plain):
        pass


def test_recheck_needs_int8_on_a_base_of_its_own(model_dir: Path) -> None:
    with pytest.raises(GuardtuneError, match="--int8-recheck: needs --dtype int8"):
        Classifier.load(model_dir, dtype="bf16", int8_recheck=0.1)
    with pytest.raises(GuardtuneError, match="between 0 and 1"):
        Classifier.load(model_dir, dtype="int8", int8_recheck=2.0)


@needs_int8
def test_predict_cli_takes_int8_recheck(
    monkeypatch: pytest.MonkeyPatch,
    model_dir: Path,
    toy_files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "predictions.csv"
    code = run_cli(
        monkeypatch, "predict", "--model", model_dir, "--data", toy_files["test"], "--out", out,
        "--dtype", "int8", "--int8-recheck", "0.999",
    )  # fmt: skip
    assert code == 0
    assert "--int8-recheck 0.999: 60 texts re-scored in" in capsys.readouterr().out
    classifier = Classifier.load(model_dir, dtype="int8", int8_recheck=0.999)
    expected = Classifier.load(model_dir, dtype=_float_name(classifier)).predict(_texts(toy_files))
    assert pd.read_csv(out)["label"].tolist() == [p.label for p in expected]  # type: ignore[union-attr]
    code = run_cli(
        monkeypatch, "predict", "--model", model_dir, "--data", toy_files["test"], "--out", out,
        "--int8-recheck", "0.1",
    )  # fmt: skip
    assert code != 0 and "--int8-recheck: needs --dtype int8" in capsys.readouterr().err
    code = run_cli(
        monkeypatch, "predict", "--model", model_dir, "--data", toy_files["test"], "--out", tmp_path / "p",
        "--engine", "ray", "--dtype", "int8", "--int8-recheck", "0.1",
    )  # fmt: skip
    assert code != 0 and "--int8-recheck: supported with --engine local only" in capsys.readouterr().err
