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
    >>> cal.save("runs/moderation")            # writes calibration.json
    >>> calibrated_task(task, cal).decide(cal.transform(raw_scores))
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.special import expit, log_softmax, softmax

from guardtune.atomic import atomic_file
from guardtune.errors import GuardtuneError
from guardtune.task import Mode, TaskSpec

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
N_BINS = 15
Objective = Literal["f1", "max_fpr", "min_recall"]
OBJECTIVES: tuple[Objective, ...] = ("f1", "max_fpr", "min_recall")
_OPTIONS = {"f1": "--objective f1", "max_fpr": "--max-fpr", "min_recall": "--min-recall"}

# Single-label probabilities only need to stay away from log(0); sigmoid logits need both ends.
_SINGLE_EPS = 1e-12
_MULTI_EPS = 1e-7
# Temperatures searched (on log T): wide enough for any model seen in practice, bounded so the
# optimiser cannot run off to 0 or infinity on separable data.
_T_BOUNDS = (0.01, 100.0)
# A threshold no probability reaches / one every probability reaches; also the effective scores
# of rows the policy gives a label (or withholds it from) whatever its threshold is.
_UNREACHABLE, _ALWAYS_REACHED = 2.0, -1.0
_KNOWN_KEYS = {
    "format_version",
    "temperature",
    "mode",
    "labels",
    "thresholds",
    "objective",
    "target",
    "label",
    "achieved",
    "ece_before",
    "ece_after",
    "n",
    "source",
    "precision",
}
PRECISIONS = ("bf16", "fp32", "int8")


# --- temperature scaling -------------------------------------------------------------------------


def logits_from_proba(scores: np.ndarray, mode: Mode) -> np.ndarray:
    """Logits that reproduce ``scores``: ``log p`` (single, up to a row constant) or ``logit p`` (multi)."""
    p = np.asarray(scores, dtype=np.float64)
    if mode == "single":
        return np.log(np.clip(p, _SINGLE_EPS, 1.0))
    p = np.clip(p, _MULTI_EPS, 1.0 - _MULTI_EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(scores: np.ndarray, temperature: float, mode: Mode) -> np.ndarray:
    """Probabilities with the logits divided by ``temperature``, in the dtype of ``scores``."""
    scores = np.asarray(scores)
    z = logits_from_proba(scores, mode) / temperature
    out = softmax(z, axis=1) if mode == "single" else expit(z)
    dtype = scores.dtype if np.issubdtype(scores.dtype, np.floating) else np.float64
    return np.asarray(out, dtype=dtype)


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


# --- the calibration record ----------------------------------------------------------------------


@dataclass
class Calibration:
    """A fitted calibration: a temperature for the scores and decision thresholds for some labels.

    Attributes:
        temperature: logits are divided by it before the softmax / sigmoid.
        mode: the task mode the temperature was fitted for.
        labels: the task's labels, in score column order (checked against the model on load).
        thresholds: label -> threshold on the calibrated score; they replace the task policy's
            thresholds for those labels (see :func:`calibrated_task`).
        objective: ``f1``, ``max_fpr`` or ``min_recall``.
        target: the FPR or recall target, when the objective has one.
        label: the label the target was set for, when one was named.
        achieved: label -> ``precision``, ``recall``, ``fpr`` of the calibrated decisions on the
            fitting rows (one label against the rest).
        ece_before, ece_after: expected calibration error on the fitting rows, raw and calibrated.
        n: fitting rows.
        source: the fitting file's name.
        precision: ``bf16``, ``fp32`` or ``int8``, what the model's projections ran in when the
            scores were computed (``Classifier.load`` warns when the model runs in another).
    """

    temperature: float
    mode: Mode
    labels: list[str]
    thresholds: dict[str, float] = field(default_factory=dict)
    objective: Objective = "f1"
    target: float | None = None
    label: str | None = None
    achieved: dict[str, dict[str, Any]] = field(default_factory=dict)
    ece_before: float | None = None
    ece_after: float | None = None
    n: int = 0
    source: str | None = None
    precision: str | None = None
    notes: list[str] = field(default_factory=list, compare=False)

    def transform(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for a raw ``(rows, labels)`` score matrix."""
        return apply_temperature(scores, self.temperature, self.mode)

    def to_json(self) -> str:
        data = {"format_version": FORMAT_VERSION, **asdict(self)}
        del data["notes"]  # messages for the person fitting it, not part of the record
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = CALIBRATION_FILE) -> Calibration:
        """Parse and check a ``calibration.json`` text.

        Raises:
            GuardtuneError: not JSON, or a key with a missing or bad value (one line, naming it).
        """
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GuardtuneError(f"{source}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise GuardtuneError(f"{source}: expected a JSON object, found {type(raw).__name__}")
        unknown = sorted(set(raw) - _KNOWN_KEYS)
        if unknown:
            warnings.warn(
                f"{source}: ignoring keys this guardtune does not know (written by a newer version?): "
                f"{unknown}",
                stacklevel=2,
            )
        return _parse(raw, source)

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/calibration.json`` atomically; returns its path."""
        path = Path(directory) / CALIBRATION_FILE
        with atomic_file(path) as tmp:
            tmp.write_text(self.to_json(), encoding="utf-8")
        return path


def _parse(raw: dict[str, Any], source: str) -> Calibration:
    def bad(key: str, expected: str) -> GuardtuneError:
        return GuardtuneError(f"{source}: key {key!r}: expected {expected}, found {raw.get(key)!r}")

    def number(key: str, low: float, high: float, optional: bool = False) -> float | None:
        value = raw.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise bad(key, f"a number in [{low:g}, {high:g}]")
        return float(value)

    temperature = raw.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
        raise bad("temperature", "a positive number")
    mode = raw.get("mode")
    if mode not in ("single", "multi"):
        raise bad("mode", "'single' or 'multi'")
    labels = raw.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise bad("labels", "a non-empty list of label names")
    thresholds = raw.get("thresholds") or {}
    if not isinstance(thresholds, dict):
        raise bad("thresholds", "a mapping of label to a number in [0, 1]")
    for name, value in thresholds.items():
        if name not in labels:
            raise GuardtuneError(f"{source}: key 'thresholds': unknown label {name!r} (labels: {labels})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise GuardtuneError(
                f"{source}: key 'thresholds.{name}': expected a number in [0, 1], found {value!r}"
            )
    objective = raw.get("objective", "f1")
    if objective not in OBJECTIVES:
        raise bad("objective", f"one of {', '.join(OBJECTIVES)}")
    label = raw.get("label")
    if label is not None and label not in labels:
        raise bad("label", f"one of {labels} or null")
    achieved = raw.get("achieved") or {}
    if not isinstance(achieved, dict) or not all(isinstance(v, dict) for v in achieved.values()):
        raise bad("achieved", "a mapping of label to rates")
    n = raw.get("n", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise bad("n", "a row count")
    precision = raw.get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise bad("precision", f"one of {', '.join(PRECISIONS)} or null")
    return Calibration(
        temperature=float(temperature),
        mode=mode,
        labels=list(labels),
        thresholds={str(k): float(v) for k, v in thresholds.items()},
        objective=objective,
        target=number("target", 0.0, 1.0, optional=True),
        label=label,
        achieved=achieved,
        ece_before=number("ece_before", 0.0, 1.0, optional=True),
        ece_after=number("ece_after", 0.0, 1.0, optional=True),
        n=n,
        source=str(raw["source"]) if raw.get("source") is not None else None,
        precision=precision,
    )


def read_calibration(directory: str | Path, task: TaskSpec | None = None) -> Calibration | None:
    """``directory/calibration.json`` if present (``None`` otherwise), checked against ``task``.

    Raises:
        GuardtuneError: unreadable or invalid file, or labels / mode that do not match the task.
    """
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GuardtuneError(f"{path}: cannot read ({exc})") from exc
    calibration = Calibration.from_json(text, source=str(path))
    if task is not None:
        if calibration.labels != task.label_names:
            raise GuardtuneError(
                f"{path}: key 'labels': {calibration.labels} do not match the model's labels "
                f"{task.label_names}; run `guardtune calibrate` again"
            )
        if calibration.mode != task.mode:
            raise GuardtuneError(f"{path}: key 'mode': {calibration.mode!r} but the task is {task.mode!r}")
    return calibration


# --- applying thresholds to a task ---------------------------------------------------------------


def _with_thresholds(task: TaskSpec, thresholds: dict[str, float]) -> TaskSpec:
    """``task`` whose policy uses ``thresholds`` for those labels (order and other labels kept).

    In a two-label single-label task a threshold on one label makes the decision binary: that label
    when its score reaches the threshold, else the other label (the other label gets threshold 0,
    checked second). Otherwise the policy's rules apply unchanged: single-label thresholds are
    checked in order, then the most likely label; multi-label thresholds are independent.
    """
    if not thresholds:
        return task
    merged = {**task.policy.thresholds, **thresholds}
    if task.mode == "single" and len(task.label_names) == 2 and len(thresholds) == 1:
        (name,) = thresholds
        (other,) = (x for x in task.label_names if x != name)
        merged = {name: thresholds[name], other: 0.0}
    return replace(task, policy=replace(task.policy, thresholds=merged))


def calibrated_task(task: TaskSpec, calibration: Calibration | None) -> TaskSpec:
    """The task whose policy decides on calibrated scores: the calibrated thresholds replace the
    policy's thresholds for their labels (see :func:`_with_thresholds` for two-label tasks)."""
    return task if calibration is None else _with_thresholds(task, calibration.thresholds)


def _effective_scores(task: TaskSpec, scores: np.ndarray, label: str) -> np.ndarray:
    """Per-row scores whose threshold reproduces the policy's decision for ``label``.

    The decision for one label is monotone in its threshold, but a single-label policy can give a
    row the label whatever its threshold (the most likely label when its threshold is not reached)
    or never (an earlier threshold wins); those rows get scores above 1 or below 0.
    """
    column = scores[:, task.label_names.index(label)].astype(np.float64)
    if task.mode == "multi":
        return column
    gets_it_anyway = np.array(_with_thresholds(task, {label: _UNREACHABLE}).decide(scores)) == label
    can_get_it = np.array(_with_thresholds(task, {label: _ALWAYS_REACHED}).decide(scores)) == label
    column[gets_it_anyway] = _UNREACHABLE
    column[~can_get_it] = _ALWAYS_REACHED
    return column


def _decided_indicator(task: TaskSpec, scores: np.ndarray) -> np.ndarray:
    """``(rows, labels)`` booleans: the labels the task's policy gives each row."""
    chosen = [{d} if task.mode == "single" else set(d) for d in task.decide(scores)]
    return np.array([[n in row for n in task.label_names] for row in chosen], dtype=bool)


def objective_for(max_fpr: float | None, min_recall: float | None) -> tuple[Objective, float | None]:
    """The objective and target for at most one of ``max_fpr`` / ``min_recall`` (neither: ``f1``).

    Raises:
        GuardtuneError: both given, or a target outside (0, 1).
    """
    if max_fpr is not None and min_recall is not None:
        raise GuardtuneError("--max-fpr and --min-recall: give at most one target")
    objective: Objective = "f1" if max_fpr is None and min_recall is None else "max_fpr"
    target = max_fpr
    if min_recall is not None:
        objective, target = "min_recall", min_recall
    if target is not None and not 0.0 < target < 1.0:
        raise GuardtuneError(f"{_OPTIONS[objective]} {target:g}: expected a number strictly between 0 and 1")
    return objective, target


def threshold_labels(task: TaskSpec, objective: Objective, label: str | None) -> list[str]:
    """The labels that get a threshold.

    - a named ``label``: that label only;
    - a two-label single-label task: the positive label, ``unsafe`` when present, else the second;
    - a multi-label task: every label (each decided on its own);
    - a single-label task with three or more labels: none for ``f1`` (the most likely label stays
      the decision; thresholds checked one after another would favour the labels checked first);
      a target needs a named label.

    Raises:
        GuardtuneError: unknown label, or a target without a label where one is needed.
    """
    names = task.label_names
    if label is not None:
        if label not in names:
            raise GuardtuneError(
                f"--label {label!r}: not a label of task {task.name} (labels: {', '.join(names)})"
            )
        return [label]
    if task.overall is not None and objective != "f1":
        return [task.overall]
    if task.mode == "multi":
        return list(names)
    if len(names) == 2:
        return ["unsafe" if "unsafe" in names else names[1]]
    if objective == "f1":
        return []
    raise GuardtuneError(
        f"{_OPTIONS[objective]}: name the label it is for with --label (one of: {', '.join(names)})"
    )


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
            f"{_OPTIONS[objective]}: expected a number strictly between 0 and 1, found {target!r}"
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
        effective = _effective_scores(_with_thresholds(task, thresholds), calibrated, name)[rows]
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
    key, option = ("fpr" if objective == "max_fpr" else "recall"), _OPTIONS[objective]
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


__all__ = [
    "CALIBRATION_FILE",
    "Calibration",
    "apply_temperature",
    "calibrated_task",
    "choose_threshold",
    "expected_calibration_error",
    "fit_calibration",
    "fit_temperature",
    "objective_for",
    "read_calibration",
    "reliability_curve",
    "threshold_labels",
]
