"""Classification metrics for single-label and multi-label tasks, as JSON-ready dicts.

Every number comes from scikit-learn; this module only picks the label sets, slices rows and
turns numpy values into plain Python (NaN becomes ``None``) so the dict can be dumped to JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)
from sklearn.preprocessing import MultiLabelBinarizer

from guardtune.errors import GuardtuneError

SAFE = "safe"
UNSAFE = "unsafe"


def single_label_metrics(
    labels: list[str], y_true: list[str], y_pred: list[str], scores: np.ndarray
) -> dict[str, Any]:
    """Metrics for one label per row.

    Args:
        labels: label names, in the column order of ``scores``.
        y_true: gold label per row.
        y_pred: predicted label per row.
        scores: ``(rows, labels)`` probabilities (softmax), used for per-class AUPRC.

    Returns:
        ``n``, ``accuracy``, ``micro_f1``, ``macro_f1``, ``weighted_f1``, ``per_class``,
        ``confusion_matrix``, plus ``fpr`` (``unsafe`` as positive) when the labels are exactly
        ``safe`` and ``unsafe``.

    Raises:
        GuardtuneError: no rows, mismatched lengths or shapes, or a label not in ``labels``.
    """
    labels = list(labels)
    y_true = [str(y) for y in y_true]
    y_pred = [str(y) for y in y_pred]
    score_matrix = _check_inputs(labels, y_true, y_pred, scores)
    _check_known(labels, y_true, "y_true")
    _check_known(labels, y_pred, "y_pred")

    true_ind = np.array([[y == label for label in labels] for y in y_true], dtype=int)
    pred_ind = np.array([[y == label for label in labels] for y in y_pred], dtype=int)
    averaged = _present(labels, true_ind, pred_ind)

    result: dict[str, Any] = {
        "n": len(y_true),
        "accuracy": accuracy_score(y_true, y_pred),
        **_averaged_f1(y_true, y_pred, averaged),
        "per_class": _per_class(labels, y_true, y_pred, true_ind, score_matrix),
        "confusion_matrix": {
            "labels": labels,
            "matrix": confusion_matrix(y_true, y_pred, labels=labels),
        },
    }
    if set(labels) == {SAFE, UNSAFE} and len(labels) == 2:
        tn, fp, _fn, _tp = confusion_matrix(y_true, y_pred, labels=[SAFE, UNSAFE]).ravel()
        result["fpr"] = fp / (fp + tn) if fp + tn else None
    return jsonable(result)


def multi_label_metrics(
    labels: list[str],
    y_true: list[list[str]],
    y_pred: list[list[str]],
    scores: np.ndarray,
    known: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics for any subset of labels per row (an empty set is the safe outcome).

    Args:
        labels: label names, in the column order of ``scores``.
        y_true: gold label set per row.
        y_pred: predicted label set per row.
        scores: ``(rows, labels)`` independent sigmoid probabilities, used for per-class AUPRC.
        known: optional ``(rows, labels)`` mask, 0 where a gold value is unknown (a guard task's
            categories on an unsafe row that names none). Each label is then scored on the rows
            where it is known, and the whole-row figures on rows where every label is known.

    Returns:
        The single-label keys (``accuracy`` is subset accuracy, ``confusion_matrix.matrix`` is one
        ``[[tn, fp], [fn, tp]]`` per label) plus ``exact_match``, ``hamming_loss``,
        ``f1_single_violation``, ``f1_multiple_violations`` and ``fpr`` (safe rows flagged).

    Raises:
        GuardtuneError: no rows, mismatched lengths or shapes, or a label not in ``labels``.
    """
    labels = list(labels)
    true_sets = [[str(y) for y in row] for row in y_true]
    pred_sets = [[str(y) for y in row] for row in y_pred]
    score_matrix = _check_inputs(labels, true_sets, pred_sets, scores)
    _check_known(labels, [y for row in true_sets for y in row], "y_true")
    _check_known(labels, [y for row in pred_sets for y in row], "y_pred")

    binarizer = MultiLabelBinarizer(classes=labels)
    true_ind = binarizer.fit_transform(true_sets)
    pred_ind = binarizer.transform(pred_sets)
    averaged = _present(labels, true_ind, pred_ind)
    # sklearn's labels= for indicator input takes column indices, not names.
    averaged_cols = [labels.index(label) for label in averaged]

    if known is not None and not np.asarray(known).all():
        return jsonable(_masked_multi_label(labels, true_ind, pred_ind, score_matrix, np.asarray(known) > 0))
    true_counts = true_ind.sum(axis=1)
    exact = accuracy_score(true_ind, pred_ind)
    safe_rows = true_counts == 0
    result: dict[str, Any] = {
        "n": len(true_sets),
        "accuracy": exact,
        "exact_match": exact,
        "hamming_loss": hamming_loss(true_ind, pred_ind),
        **_averaged_f1(true_ind, pred_ind, averaged_cols),
        "f1_single_violation": _weighted_f1_on(true_ind, pred_ind, true_counts == 1),
        "f1_multiple_violations": _weighted_f1_on(true_ind, pred_ind, true_counts >= 2),
        "fpr": float(pred_ind[safe_rows].any(axis=1).mean()) if safe_rows.any() else None,
        "per_class": _per_class(
            labels, true_ind, pred_ind, true_ind, score_matrix, sk_labels=list(range(len(labels)))
        ),
        "confusion_matrix": {
            "labels": labels,
            "matrix": multilabel_confusion_matrix(true_ind, pred_ind),
        },
    }
    return jsonable(result)


def _masked_multi_label(
    labels: list[str], true_ind: np.ndarray, pred_ind: np.ndarray, scores: np.ndarray, known: np.ndarray
) -> dict[str, Any]:
    """Multi-label metrics where some gold values are unknown: per label on its known rows."""
    per_class: dict[str, dict[str, Any]] = {}
    matrices = []
    for j, label in enumerate(labels):
        rows = known[:, j]
        truth, predicted = true_ind[rows, j], pred_ind[rows, j]
        precision, recall, f1, _ = precision_recall_fscore_support(
            truth, predicted, labels=[1], average=None, zero_division=0
        )
        per_class[label] = {
            "precision": precision[0],
            "recall": recall[0],
            "f1": f1[0],
            "support": int(truth.sum()),
            "known_rows": int(rows.sum()),
            "auprc": average_precision_score(truth, scores[rows, j]) if truth.any() else None,
        }
        matrices.append(confusion_matrix(truth, predicted, labels=[0, 1]) if rows.any() else np.zeros((2, 2)))
    seen = [
        j for j, label in enumerate(labels) if per_class[label]["support"] or pred_ind[known[:, j], j].any()
    ]
    seen = seen or list(range(len(labels)))
    tp = sum(int(m[1, 1]) for m in matrices)
    fp = sum(int(m[0, 1]) for m in matrices)
    fn = sum(int(m[1, 0]) for m in matrices)
    supports = np.array([per_class[labels[j]]["support"] for j in seen], dtype=float)
    f1s = np.array([per_class[labels[j]]["f1"] for j in seen], dtype=float)
    complete = known.all(axis=1)
    true_counts = true_ind.sum(axis=1)
    safe_rows = true_counts == 0
    full_true, full_pred = true_ind[complete], pred_ind[complete]
    return {
        "n": len(true_ind),
        "n_fully_labelled": int(complete.sum()),
        "accuracy": accuracy_score(full_true, full_pred) if complete.any() else None,
        "exact_match": accuracy_score(full_true, full_pred) if complete.any() else None,
        "hamming_loss": hamming_loss(full_true, full_pred) if complete.any() else None,
        "micro_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "macro_f1": float(f1s.mean()),
        "weighted_f1": float((f1s * supports).sum() / supports.sum()) if supports.sum() else 0.0,
        "f1_single_violation": _weighted_f1_on(true_ind, pred_ind, complete & (true_counts == 1)),
        "f1_multiple_violations": _weighted_f1_on(true_ind, pred_ind, complete & (true_counts >= 2)),
        "fpr": float(pred_ind[safe_rows].any(axis=1).mean()) if safe_rows.any() else None,
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "matrix": matrices},
    }


def _check_inputs(
    labels: list[str], y_true: Sequence[Any], y_pred: Sequence[Any], scores: np.ndarray
) -> np.ndarray:
    if not labels:
        raise GuardtuneError("metrics: expected at least one label")
    if len(set(labels)) != len(labels):
        raise GuardtuneError(f"metrics: label names must be unique, found {labels}")
    if not y_true:
        raise GuardtuneError("metrics: no rows to evaluate")
    if len(y_true) != len(y_pred):
        raise GuardtuneError(f"metrics: y_true has {len(y_true)} rows but y_pred has {len(y_pred)}")
    matrix = np.asarray(scores, dtype=float)
    if matrix.shape != (len(y_true), len(labels)):
        raise GuardtuneError(
            f"metrics: expected scores of shape ({len(y_true)}, {len(labels)}) "
            f"(rows, labels), found {matrix.shape}"
        )
    return matrix


def _check_known(labels: list[str], values: list[str], name: str) -> None:
    # sklearn silently drops labels outside labels=..., which would hide a task/model mismatch.
    unknown = sorted(set(values) - set(labels))
    if unknown:
        raise GuardtuneError(f"metrics: {name} has labels not in the task: {unknown} ({labels})")


def _present(labels: list[str], true_ind: np.ndarray, pred_ind: np.ndarray) -> list[str]:
    """Labels seen in y_true or y_pred (all labels if none are).

    Macro F1 averages over these only, as sklearn does by default for string labels: a label that
    is neither in the gold data nor ever predicted would otherwise count as an F1 of 0.
    """
    seen = (true_ind.sum(axis=0) + pred_ind.sum(axis=0)) > 0
    present = [label for label, on in zip(labels, seen, strict=True) if on]
    return present or labels


def _averaged_f1(y_true: Any, y_pred: Any, sk_labels: list[Any]) -> dict[str, float]:
    return {
        f"{average}_f1": f1_score(y_true, y_pred, labels=sk_labels, average=average, zero_division=0)
        for average in ("micro", "macro", "weighted")
    }


def _weighted_f1_on(true_ind: np.ndarray, pred_ind: np.ndarray, rows: np.ndarray) -> float | None:
    if not rows.any():
        return None
    return float(f1_score(true_ind[rows], pred_ind[rows], average="weighted", zero_division=0))


def _per_class(
    labels: list[str],
    y_true: Any,
    y_pred: Any,
    true_ind: np.ndarray,
    scores: np.ndarray,
    sk_labels: list[Any] | None = None,
) -> dict[str, dict[str, Any]]:
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=sk_labels or labels, average=None, zero_division=0
    )
    per_class: dict[str, dict[str, Any]] = {}
    for j, label in enumerate(labels):
        positives = true_ind[:, j]
        # AP is undefined without positives; sklearn would warn and return a misleading number.
        auprc = average_precision_score(positives, scores[:, j]) if positives.any() else None
        per_class[label] = {
            "precision": precision[j],
            "recall": recall[j],
            "f1": f1[j],
            "support": support[j],
            "auprc": auprc,
        }
    return per_class


def jsonable(value: Any) -> Any:
    """Plain Python containers and numbers, with NaN as ``None``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return None if math.isnan(number) else number
    return value
