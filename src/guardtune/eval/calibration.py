"""Temperature scaling, expected calibration error and decision thresholds, fitted on validation rows.

Everything works on the model's probability matrix ``(rows, labels)``, so it does not depend on the
method that produced it:

- single-label tasks: ``log p`` are the logits up to a per-row constant, and softmax ignores that
  constant, so ``softmax(log p / T) == softmax(z / T)``;
- multi-label tasks: the logits are ``log(p / (1 - p))`` (``p`` clipped to ``[1e-7, 1 - 1e-7]``) and
  one temperature is shared by every label, fitted with binary cross-entropy.

Thresholds are chosen per label on the *calibrated* scores, against the decision the task's policy
actually makes with them (see :func:`calibrated_task`), so the false-positive rate or recall reported
on the fitting data is what ``predict`` gives on those rows.

Example:
    >>> cal = fit_calibration(task, raw_scores, gold_indicator, objective="max_fpr", target=0.05)
    >>> cal.save("runs/moderation")            # writes calibration.json (see calibration_file.py)
    >>> calibrated_task(task, cal).decide(cal.transform(raw_scores))
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import log_softmax

from guardtune.errors import GuardtuneError
from guardtune.eval.calibration_file import (
    CALIBRATION_FILE,
    OBJECTIVES,
    OPTION_NAMES,
    PRECISIONS,
    Calibration,
    Objective,
    apply_temperature,
    calibrated_task,
    logits_from_proba,
    objective_for,
    read_calibration,
    threshold_labels,
    with_thresholds,
)
from guardtune.task import Mode, TaskSpec

N_BINS = 15

# Temperatures searched (on log T): wide enough for any model seen in practice, bounded so the
# optimiser cannot run off to 0 or infinity on separable data.
_T_BOUNDS = (0.01, 100.0)
# A threshold no probability reaches / one every probability reaches; also the effective scores
# of rows the policy gives a label (or withholds it from) whatever its threshold is.
_UNREACHABLE, _ALWAYS_REACHED = 2.0, -1.0
# --- temperature scaling -------------------------------------------------------------------------


def _nll(z: np.ndarray, truth: np.ndarray, mode: Mode, temperature: float) -> float:
    scaled = z / temperature
    if mode == "single":
        return float(-np.mean(log_softmax(scaled, axis=1)[truth.astype(bool)]))
    # Binary cross-entropy from logits: log(1 + e^x) - y x, stable for large |x|.
    return float(np.mean(np.logaddexp(0.0, scaled) - truth * scaled))


def fit_temperature(scores: np.ndarray, truth: np.ndarray, mode: Mode) -> float:
    """The temperature that minimises the negative log-likelihood of ``truth``.

    Args:
        scores: ``(rows, labels)`` probabilities (softmax rows or independent sigmoids).
        truth: ``(rows, labels)`` 0/1 gold matrix (one-hot for single-label tasks).
        mode: ``single`` (softmax, cross-entropy) or ``multi`` (sigmoids, one T for every label, BCE).

    Returns:
        ``T`` in ``[0.01, 100]``; above 1 softens over-confident scores, below 1 sharpens them.
    """
    z = logits_from_proba(scores, mode)
    y = _check_truth(np.asarray(truth), z.shape, mode)
    low, high = (math.log(bound) for bound in _T_BOUNDS)
    # Fitting and threshold search load scipy.optimize / sklearn on first use; applying a
    # calibration at inference needs neither.
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_t: _nll(z, y, mode, math.exp(log_t)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


# --- expected calibration error ------------------------------------------------------------------


def _confidence_pairs(scores: np.ndarray, truth: np.ndarray, mode: Mode) -> tuple[np.ndarray, np.ndarray]:
    """(correct?, probability) pairs whose agreement calibration measures."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    y = _check_truth(np.asarray(truth), p.shape, mode)
    if mode == "single":
        top = p.argmax(axis=1)
        return (y.argmax(axis=1) == top).astype(float), p[np.arange(len(p)), top]
    return y.ravel().astype(float), p.ravel()


def reliability_curve(
    scores: np.ndarray, truth: np.ndarray, mode: Mode, n_bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean predicted probability, observed frequency and row count per non-empty bin.

    Single-label tasks bin the top-class confidence (observed: the top class is right);
    multi-label tasks bin every label's probability (observed: the label is on). Bins are
    ``n_bins`` equal-width bins on ``[0, 1]`` (sklearn's ``calibration_curve``, strategy uniform).
    """
    correct, confidence = _confidence_pairs(scores, truth, mode)
    if len(correct) == 0:
        empty = np.zeros(0)
        return empty, empty, empty.astype(int)
    from sklearn.calibration import calibration_curve

    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
    # calibration_curve drops empty bins but not their sizes; recount with its own binning rule.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=n_bins)
    return prob_pred, prob_true, counts[counts > 0]


def expected_calibration_error(
    scores: np.ndarray, truth: np.ndarray, mode: Mode, n_bins: int = N_BINS
) -> float:
    """Row-weighted mean gap between confidence and accuracy over ``n_bins`` equal-width bins.

    Args:
        scores: ``(rows, labels)`` probabilities.
        truth: ``(rows, labels)`` 0/1 gold matrix.
        mode: ``single`` (top-class confidence) or ``multi`` (every label probability).

    Returns:
        ECE in ``[0, 1]``; 0 is perfectly calibrated.
    """
    prob_pred, prob_true, counts = reliability_curve(scores, truth, mode, n_bins)
    if counts.sum() == 0:
        return float("nan")
    return float(np.sum(counts * np.abs(prob_true - prob_pred)) / counts.sum())


# --- thresholds ----------------------------------------------------------------------------------


def choose_threshold(
    y_true: np.ndarray, scores: np.ndarray, objective: Objective, target: float | None
) -> float:
    """A decision threshold (flag when ``score >= threshold``) for one binary label.

    Args:
        y_true: 0/1 per row.
        scores: one score per row; values outside ``[0, 1]`` mark rows whose decision is fixed.
        objective: ``f1`` (maximise F1), ``max_fpr`` (largest recall with false-positive rate at most
            ``target``; ties go to the lower FPR) or ``min_recall`` (highest precision with recall at
            least ``target``; ties go to the higher threshold).
        target: the FPR or recall target for ``max_fpr`` / ``min_recall``.

    Returns:
        A threshold that meets the target on these rows, or ``inf`` when only flagging nothing does.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if objective == "max_fpr":
        assert target is not None
        fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
        ok = np.flatnonzero(fpr <= target)
        # Highest recall, then lowest FPR, then highest threshold (curve points run high -> low).
        best = max(ok, key=lambda i: (tpr[i], -fpr[i], -i))
        return float(thresholds[best])
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    if objective == "min_recall":
        assert target is not None
        ok = np.flatnonzero(recall >= target)
        best = max(ok, key=lambda i: (precision[i], i))
        return float(thresholds[best])
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
    )
    return float(thresholds[int(np.argmax(f1))])


def _binary_rates(y: np.ndarray, flagged: np.ndarray) -> dict[str, float | None]:
    tp = int(np.sum(flagged & (y == 1)))
    fp = int(np.sum(flagged & (y == 0)))
    positives, negatives = int(np.sum(y == 1)), int(np.sum(y == 0))
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / positives if positives else None,
        "fpr": fp / negatives if negatives else None,
        "positives": positives,
        "negatives": negatives,
    }


def _effective_scores(task: TaskSpec, scores: np.ndarray, label: str) -> np.ndarray:
    """Per-row scores whose threshold reproduces the policy's decision for ``label``.

    The decision for one label is monotone in its threshold, but a single-label policy can give a
    row the label whatever its threshold (the most likely label when its threshold is not reached)
    or never (an earlier threshold wins); those rows get scores above 1 or below 0.
    """
    column = scores[:, task.label_names.index(label)].astype(np.float64)
    if task.mode == "multi":
        return column
    gets_it_anyway = np.array(with_thresholds(task, {label: _UNREACHABLE}).decide(scores)) == label
    can_get_it = np.array(with_thresholds(task, {label: _ALWAYS_REACHED}).decide(scores)) == label
    column[gets_it_anyway] = _UNREACHABLE
    column[~can_get_it] = _ALWAYS_REACHED
    return column


def _decided_indicator(task: TaskSpec, scores: np.ndarray) -> np.ndarray:
    """``(rows, labels)`` booleans: the labels the task's policy gives each row."""
    chosen = [{d} if task.mode == "single" else set(d) for d in task.decide(scores)]
    return np.array([[n in row for n in task.label_names] for row in chosen], dtype=bool)


def fit_calibration(
    task: TaskSpec,
    scores: np.ndarray,
    truth: np.ndarray,
    objective: Objective = "f1",
    target: float | None = None,
    label: str | None = None,
    source: str | None = None,
    known: np.ndarray | None = None,
) -> Calibration:
    """Fit a temperature and thresholds on labelled rows (normally the validation split).

    Args:
        task: the model's task (labels, mode, policy).
        scores: ``(rows, labels)`` raw probabilities from the model.
        truth: ``(rows, labels)`` 0/1 gold matrix (one-hot for single-label tasks).
        objective: ``f1`` (per label), ``max_fpr`` or ``min_recall`` (see :func:`choose_threshold`).
        target: the FPR or recall target, in (0, 1), for ``max_fpr`` / ``min_recall``.
        label: the label to threshold (see :func:`threshold_labels` for the default).
        source: name of the fitting data, recorded in the result.
        known: optional ``(rows, labels)`` mask of known gold values (a guard task's categories
            may be unknown); each threshold is fitted on the rows where its label is known, and
            a guard's temperature on its overall label.

    Returns:
        The :class:`Calibration`; ``achieved`` holds the rates of the calibrated decisions.

    Raises:
        GuardtuneError: bad objective or target, unknown label, a named label without both
            positive and negative rows, or a target the task policy cannot reach on these rows.
    """
    if objective not in OBJECTIVES:
        raise GuardtuneError(f"objective: expected one of {', '.join(OBJECTIVES)}, found {objective!r}")
    if objective == "f1":
        target = None
    elif target is None or not 0.0 < target < 1.0:
        raise GuardtuneError(
            f"{OPTION_NAMES[objective]}: expected a number strictly between 0 and 1, found {target!r}"
        )
    raw = np.asarray(scores)
    y = _check_truth(np.asarray(truth), raw.shape, task.mode)
    if len(raw) == 0:
        raise GuardtuneError(f"{source or 'calibration data'}: no rows to calibrate on")
    chosen = threshold_labels(task, objective, label)
    named = label is not None or (task.mode == "single" and len(task.label_names) == 2)

    mask = np.ones(raw.shape, dtype=bool) if known is None else np.asarray(known) > 0
    judged = [task.label_names.index(task.overall)] if task.overall else list(range(raw.shape[1]))
    temperature = fit_temperature(raw[:, judged], y[:, judged], task.mode)
    calibration = Calibration(temperature=temperature, mode=task.mode, labels=task.label_names)
    calibrated = calibration.transform(raw)
    thresholds: dict[str, float] = {}
    for name in chosen:
        rows = mask[:, task.label_names.index(name)]
        column = y[rows, task.label_names.index(name)]
        if column.all() or not column.any():
            what = "negative" if column.all() else "positive"
            message = (
                f"label {name!r}: {source or 'the data'} has no {what} rows, so no threshold can be fitted"
            )
            if named:
                raise GuardtuneError(message)
            calibration.notes.append(message + "; its policy threshold is kept")
            continue
        effective = _effective_scores(with_thresholds(task, thresholds), calibrated, name)[rows]
        threshold = choose_threshold(column, effective, objective, target)
        thresholds[name] = float(np.clip(threshold, 0.0, 1.0))
    calibration.thresholds = thresholds
    decided = _decided_indicator(calibrated_task(task, calibration), calibrated)
    for name in thresholds:
        j = task.label_names.index(name)
        calibration.achieved[name] = _binary_rates(y[mask[:, j], j], decided[mask[:, j], j])
        _check_reached(objective, target, name, calibration.achieved[name], source)
    calibration.objective = objective
    calibration.target = target
    calibration.label = label if label is not None else (chosen[0] if named and chosen else None)
    calibration.ece_before = expected_calibration_error(raw[:, judged], y[:, judged], task.mode)
    calibration.ece_after = expected_calibration_error(calibrated[:, judged], y[:, judged], task.mode)
    calibration.n = len(raw)
    calibration.source = source
    return calibration


def _check_reached(
    objective: Objective, target: float | None, name: str, rates: dict[str, Any], source: str | None
) -> None:
    # Reachable unless the policy gives the label whatever its threshold (a single-label task with
    # three or more labels falls back to the most likely label) or scores tie at the threshold.
    key, option = ("fpr" if objective == "max_fpr" else "recall"), OPTION_NAMES[objective]
    value = rates[key]
    if target is None or value is None:
        return
    if (key == "fpr" and value > target) or (key == "recall" and value < target):
        raise GuardtuneError(
            f"{option} {target:g}: not reachable for label {name!r} on {source or 'the data'}: the best "
            f"threshold gives {key} {value:.3f} (the policy picks {name!r} as the most likely label "
            "whatever its threshold, or scores tie)"
        )


def _check_truth(truth: np.ndarray, shape: tuple[int, ...], mode: Mode) -> np.ndarray:
    if truth.shape != shape or len(shape) != 2:
        raise GuardtuneError(f"calibration: expected a gold matrix of shape {shape}, found {truth.shape}")
    y = truth.astype(np.float64)
    if mode == "single" and len(y) and not np.all(y.sum(axis=1) == 1):
        raise GuardtuneError("calibration: single-label gold rows must be one-hot")
    return y


# Names of calibration_file.py kept importable from here, where they lived before.
__all__ = [
    "CALIBRATION_FILE",
    "OBJECTIVES",
    "PRECISIONS",
    "Calibration",
    "apply_temperature",
    "calibrated_task",
    "choose_threshold",
    "expected_calibration_error",
    "fit_calibration",
    "fit_temperature",
    "logits_from_proba",
    "objective_for",
    "read_calibration",
    "reliability_curve",
    "threshold_labels",
]
