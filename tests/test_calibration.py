"""Temperature scaling, ECE, thresholds and calibration.json; end to end on the tiny model."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from scipy.special import expit, softmax

from guardtune.api import Classifier, train
from guardtune.errors import GuardtuneError
from guardtune.eval.calibration import (
    CALIBRATION_FILE,
    Calibration,
    apply_temperature,
    calibrated_task,
    choose_threshold,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    read_calibration,
)
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings

# A two-label safe/unsafe task (the built-in moderation task is a multi-label guard).
MODERATION = task_from_dict(
    {"name": "safe-unsafe", "mode": "single", "labels": {"safe": "harmless", "unsafe": "harmful"}}
)
PII_INTENT = load_task("pii-intent")
PII_CATEGORIES = load_task("pii-categories")


def _single(n: int, k: int, seed: int, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated softmax scores and one-hot labels drawn from them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * scale
    proba = softmax(logits, axis=1)
    labels = np.array([rng.choice(k, p=row) for row in proba])
    return logits, np.eye(k, dtype=int)[labels]


def _multi(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated sigmoid logits and 0/1 labels drawn from them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2.0 - 1.0
    return logits, (rng.random((n, k)) < expit(logits)).astype(int)


def _rates(task, calibration: Calibration, raw: np.ndarray, truth: np.ndarray, label: str):
    """FPR and recall of the decisions ``predict`` makes for ``label``."""
    decided = calibrated_task(task, calibration).decide(calibration.transform(raw))
    j = task.label_names.index(label)
    flagged = np.array([label in d if isinstance(d, list) else d == label for d in decided])
    positive = truth[:, j] == 1
    return flagged[~positive].mean(), flagged[positive].mean()


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_temperature_scaling_lowers_ece_of_over_confident_scores(mode: str) -> None:
    logits, truth = _single(3000, 3, seed=0) if mode == "single" else _multi(3000, 4, seed=0)
    sharp = softmax(logits * 3, axis=1) if mode == "single" else expit(logits * 3)  # over-confident
    temperature = fit_temperature(sharp, truth, mode)  # type: ignore[arg-type]
    before = expected_calibration_error(sharp, truth, mode)  # type: ignore[arg-type]
    after = expected_calibration_error(apply_temperature(sharp, temperature, mode), truth, mode)  # type: ignore[arg-type]
    assert before > 0.1
    assert after < before / 3


@pytest.mark.parametrize(
    ("mode", "true_t"), [("single", 2.5), ("single", 0.6), ("multi", 0.5), ("multi", 2.0)]
)
def test_fitted_temperature_recovers_a_known_one(mode: str, true_t: float) -> None:
    logits, truth = _single(4000, 4, seed=1) if mode == "single" else _multi(4000, 3, seed=1)
    # Scores whose logits were multiplied by 1/T: dividing them by T again makes them calibrated.
    distorted = softmax(logits / true_t, axis=1) if mode == "single" else expit(logits / true_t)
    assert fit_temperature(distorted, truth, mode) == pytest.approx(1 / true_t, rel=0.08)  # type: ignore[arg-type]


def test_temperature_keeps_single_label_rows_summing_to_one_and_the_argmax() -> None:
    logits, _ = _single(50, 3, seed=2)
    proba = softmax(logits, axis=1).astype(np.float32)
    scaled = apply_temperature(proba, 1.7, "single")
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(scaled.argmax(axis=1), proba.argmax(axis=1))
    np.testing.assert_allclose(apply_temperature(proba, 1.0, "single"), proba, atol=1e-6)


def test_ece_of_a_hand_made_case() -> None:
    # Every row 90% confident, half of them right: ECE = |0.9 - 0.5| = 0.4.
    scores = np.array([[0.9, 0.1]] * 4)
    truth = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    assert expected_calibration_error(scores, truth, "single") == pytest.approx(0.4)
    # Multi-label: all probabilities [0.9, 0.1, 0.9, 0.1] against [1, 0, 1, 0]: gaps of 0.1 each.
    multi = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert expected_calibration_error(multi, np.array([[1, 0], [1, 0]]), "multi") == pytest.approx(0.1)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_binary_threshold_meets_max_fpr_on_fitting_data(target: float) -> None:
    logits, truth = _single(1500, 2, seed=3, scale=1.5)
    raw = softmax(logits * 2, axis=1).astype(np.float32)
    cal = fit_calibration(MODERATION, raw, truth, objective="max_fpr", target=target)
    assert list(cal.thresholds) == ["unsafe"] and cal.label == "unsafe"
    fpr, recall = _rates(MODERATION, cal, raw, truth, "unsafe")
    assert fpr <= target
    assert cal.achieved["unsafe"]["fpr"] == pytest.approx(fpr)
    assert cal.achieved["unsafe"]["recall"] == pytest.approx(recall)
    # No looser threshold keeps the FPR: the next lower calibrated score breaks the target.
    scores = cal.transform(raw)[:, 1].astype(np.float64)
    lower = scores[scores < cal.thresholds["unsafe"]]
    if len(lower):
        assert ((scores >= lower.max()) & (truth[:, 1] == 0)).sum() / (truth[:, 1] == 0).sum() > target


@pytest.mark.parametrize(
    ("task", "label", "target"),
    [
        (MODERATION, None, 0.95),
        (MODERATION, "safe", 0.8),
        (PII_INTENT, "giving", 0.9),
        (PII_CATEGORIES, "S3", 0.9),
    ],
)
def test_threshold_meets_min_recall_on_fitting_data(task, label, target: float) -> None:
    k = len(task.label_names)
    logits, truth = _single(1200, k, seed=4) if task.mode == "single" else _multi(1200, k, seed=4)
    raw = softmax(logits, axis=1) if task.mode == "single" else expit(logits)
    cal = fit_calibration(task, raw, truth, objective="min_recall", target=target, label=label)
    name = label or "unsafe"
    assert list(cal.thresholds) == [name]
    _, recall = _rates(task, cal, raw, truth, name)
    assert recall >= target
    assert cal.achieved[name]["recall"] == pytest.approx(recall)


def test_multi_label_max_fpr_and_per_label_max_f1() -> None:
    logits, truth = _multi(1500, 5, seed=5)
    raw = expit(logits * 2)
    cal = fit_calibration(PII_CATEGORIES, raw, truth, objective="max_fpr", target=0.05, label="S2")
    fpr, _ = _rates(PII_CATEGORIES, cal, raw, truth, "S2")
    assert list(cal.thresholds) == ["S2"] and fpr <= 0.05
    best = fit_calibration(PII_CATEGORIES, raw, truth)  # default: every label, max F1
    assert list(best.thresholds) == PII_CATEGORIES.label_names
    calibrated = best.transform(raw)
    for j, name in enumerate(PII_CATEGORIES.label_names):
        f1 = _f1(truth[:, j], calibrated[:, j] >= best.thresholds[name])
        assert f1 >= _f1(truth[:, j], calibrated[:, j] >= 0.5) - 1e-12


def _f1(y: np.ndarray, flagged: np.ndarray) -> float:
    tp = np.sum(flagged & (y == 1))
    return 2 * tp / (flagged.sum() + y.sum())


def test_choose_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 300)
    scores = np.round(np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1), 2)  # ties on purpose
    for target in (0.05, 0.1, 0.3):
        threshold = choose_threshold(y, scores, "max_fpr", target)
        candidates = [t for t in np.unique(scores) if np.mean(scores[y == 0] >= t) <= target]
        best_recall = max(np.mean(scores[y == 1] >= t) for t in candidates)
        assert np.mean(scores[y == 0] >= threshold) <= target
        assert np.mean(scores[y == 1] >= threshold) == best_recall
    for target in (0.5, 0.9, 0.99):
        threshold = choose_threshold(y, scores, "min_recall", target)
        candidates = [t for t in np.unique(scores) if np.mean(scores[y == 1] >= t) >= target]
        best_precision = max(np.mean(y[scores >= t]) for t in candidates)
        assert np.mean(scores[y == 1] >= threshold) >= target
        assert np.mean(y[scores >= threshold]) == pytest.approx(best_precision)


def test_two_label_threshold_makes_the_decision_binary() -> None:
    cal = Calibration(temperature=1.0, mode="single", labels=["safe", "unsafe"], thresholds={"unsafe": 0.8})
    task = calibrated_task(MODERATION, cal)
    # 0.7 is the most likely label but below the threshold: safe.
    assert task.decide(np.array([[0.3, 0.7], [0.15, 0.85], [0.9, 0.1]])) == ["safe", "unsafe", "safe"]
    assert MODERATION.policy.thresholds == {}  # the task itself is unchanged


def test_unreachable_target_and_bad_arguments_are_errors() -> None:
    logits, truth = _single(600, 3, seed=7)
    raw = softmax(logits, axis=1)
    # Single-label, three labels: the most likely label decides the rest, so a tiny FPR cannot be met.
    with pytest.raises(GuardtuneError, match=r"--max-fpr 0\.001: not reachable for label 'giving'"):
        fit_calibration(PII_INTENT, raw, truth, objective="max_fpr", target=0.001, label="giving")
    with pytest.raises(GuardtuneError, match="name the label it is for with --label"):
        fit_calibration(PII_INTENT, raw, truth, objective="min_recall", target=0.9)
    with pytest.raises(GuardtuneError, match="--label 'asknig': not a label"):
        fit_calibration(PII_INTENT, raw, truth, label="asknig")
    with pytest.raises(GuardtuneError, match="strictly between 0 and 1"):
        fit_calibration(PII_INTENT, raw, truth, objective="max_fpr", target=1.5, label="giving")
    assert fit_calibration(PII_INTENT, raw, truth).thresholds == {}  # 3 labels, max F1: argmax stays


def test_calibration_json_round_trips_and_bad_files_get_one_line(tmp_path: Path) -> None:
    logits, truth = _single(400, 2, seed=8)
    cal = fit_calibration(MODERATION, softmax(logits * 2, axis=1), truth, objective="max_fpr", target=0.1)
    path = cal.save(tmp_path)
    assert path == tmp_path / CALIBRATION_FILE
    assert read_calibration(tmp_path, MODERATION) == cal
    assert read_calibration(tmp_path / "elsewhere") is None
    assert [p.name for p in tmp_path.iterdir()] == [CALIBRATION_FILE]  # no temp file left

    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "isotonic": [1, 2]}))
    with pytest.warns(UserWarning, match="isotonic"):
        assert read_calibration(tmp_path, MODERATION) == cal

    cases = [
        ("{not json", "not valid JSON"),
        (json.dumps({**raw, "temperature": -1}), "key 'temperature': expected a positive number"),
        (json.dumps({**raw, "thresholds": {"unsafe": 2}}), "key 'thresholds.unsafe': expected a number"),
        (json.dumps({**raw, "thresholds": {"nsfw": 0.5}}), "unknown label 'nsfw'"),
        (json.dumps({**raw, "labels": ["unsafe", "safe"]}), "do not match the model's labels"),
    ]
    for text, expected in cases:
        path.write_text(text)
        with pytest.raises(GuardtuneError) as info:
            read_calibration(tmp_path, MODERATION)
        message = str(info.value)
        assert expected in message and str(path) in message and "\n" not in message


# --- end to end on the tiny model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def moderation_model(tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The toy task as safe (none) / unsafe (asking, giving), trained for a few steps."""
    folder = tmp_path_factory.mktemp("moderation")
    files = {}
    for name in ("train", "val"):
        frame = pd.read_csv(toy_files[name])
        frame["label"] = np.where(frame["label"] == "none", "safe", "unsafe")
        files[name] = folder / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    settings = TrainSettings(max_steps=5, batch_size=16, max_length=32, learning_rate=3e-3, dtype="fp32")
    report = train(MODERATION, files["train"], folder / "model", base=tiny_base, settings=settings)
    return report.directory, files["val"]


def test_calibrate_cli_then_load_predict_and_eval(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], moderation_model, tmp_path: Path
) -> None:
    model, val = moderation_model
    raw_clf = Classifier.load(model, dtype="fp32")
    assert raw_clf.calibration is None
    texts = pd.read_csv(val)["text"].tolist()
    raw = raw_clf.predict_proba(texts)

    assert (
        run_cli(
            monkeypatch, "calibrate", "--model", model, "--data", val, "--max-fpr", "0.1", "--dtype", "fp32"
        )
        == 0
    )
    printed = capsys.readouterr().out
    for fragment in ("Temperature", "ECE", "unsafe", "calibration.json"):
        assert fragment in printed
    assert (model / CALIBRATION_FILE).is_file()

    clf = Classifier.load(model, dtype="fp32")
    assert clf.calibration is not None and clf.calibration.label == "unsafe"
    calibrated = clf.predict_proba(texts)
    np.testing.assert_allclose(clf.predict_proba(texts, calibrated=False), raw, atol=1e-6)
    assert not np.allclose(calibrated, raw, atol=1e-4)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-5)
    # predict uses the calibrated threshold, and meets the FPR on the rows it was fitted on.
    gold = pd.read_csv(val)["label"].to_numpy()
    flagged = np.array([p.label == "unsafe" for p in clf.predict(texts)])
    assert flagged[gold == "safe"].mean() <= 0.1
    assert clf.task.policy.thresholds["unsafe"] == clf.calibration.thresholds["unsafe"]

    report = tmp_path / "report"
    assert (
        run_cli(monkeypatch, "eval", "--model", model, "--data", val, "--out", report, "--dtype", "fp32") == 0
    )
    metrics = json.loads((report / "metrics.json").read_text())
    assert {"n", "accuracy", "macro_f1", "per_class", "confusion_matrix", "fpr"} <= set(metrics)
    assert metrics["fpr"] <= 0.1
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_uncalibrated"] <= 1
    assert metrics["ece"] == pytest.approx(clf.calibration.ece_after, abs=1e-6)
    assert (report / "reliability.png").stat().st_size > 0
    assert "reliability.png" in (report / "report.md").read_text()
    assert "uncalibrated" in (report / "report.md").read_text()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--max-fpr", "0.05", "--min-recall", "0.9"], "give at most one target"),
        (["--max-fpr", "1.5"], "--max-fpr 1.5: expected a number strictly between 0 and 1"),
        (["--min-recall", "0"], "--min-recall 0: expected a number strictly between 0 and 1"),
        (["--label", "nsfw"], "--label 'nsfw': not a label of task safe-unsafe"),
    ],
)
def test_calibrate_cli_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    moderation_model,
    extra: list[str],
    expected: str,
) -> None:
    model, val = moderation_model
    before = (model / CALIBRATION_FILE).read_bytes() if (model / CALIBRATION_FILE).exists() else None
    assert run_cli(monkeypatch, "calibrate", "--model", model, "--data", val, "--dtype", "fp32", *extra) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and expected in err and len(err.splitlines()) == 1
    after = (model / CALIBRATION_FILE).read_bytes() if (model / CALIBRATION_FILE).exists() else None
    assert after == before  # nothing written
