"""Metrics per group of rows (a ``family`` or ``source`` column): where a guard fails, not just how often.

A guard can score well overall and still fail a whole kind of text (greetings, warnings that mention
passwords, business e-mail). Per group this gives accuracy (exact match for multi-label tasks), F1
(macro over the labels in the group for single-label tasks, micro for multi-label), each gold label's
recall, and the false-positive rate: the share of rows that flag nothing in truth but are flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, recall_score
from sklearn.preprocessing import MultiLabelBinarizer

from guardtune.errors import GuardtuneError
from guardtune.eval.metrics import jsonable
from guardtune.task import TaskSpec


def group_metrics(
    task: TaskSpec, groups: Sequence[Any], y_true: Sequence[Any], y_pred: Sequence[Any], column: str
) -> dict[str, Any]:
    """Metrics per distinct value of ``groups``, groups in order of first appearance.

    Args:
        task: the task the labels belong to (its mode and its "nothing flagged" outcome).
        groups: the group of each row (a missing value becomes the group ``(none)``).
        y_true: gold label (single) or label list (multi) per row.
        y_pred: decided label or label list per row.
        column: the name of the column the groups came from, recorded in the result.

    Returns:
        ``{"column": column, "metrics": {group: {n, accuracy, macro_f1 | micro_f1, recall,
        n_negative, fpr}}, "weakest": group}``; ``weakest`` has the lowest accuracy.

    Raises:
        GuardtuneError: the three sequences differ in length.
    """
    if not len(groups) == len(y_true) == len(y_pred):
        raise GuardtuneError(
            f"group metrics: expected one group, gold and predicted value per row; found "
            f"{len(groups)}, {len(y_true)} and {len(y_pred)}"
        )
    names = [_group_name(g) for g in groups]
    per_group: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        rows = [i for i, g in enumerate(names) if g == name]
        per_group[name] = _one_group(task, [y_true[i] for i in rows], [y_pred[i] for i in rows])
    weakest = min(per_group, key=lambda g: per_group[g]["accuracy"]) if per_group else None
    return jsonable({"column": column, "metrics": per_group, "weakest": weakest})


def _group_name(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == "":
        return "(none)"
    return str(value)


def _one_group(task: TaskSpec, truth: list[Any], predicted: list[Any]) -> dict[str, Any]:
    labels = task.label_names
    if task.mode == "single":
        truth, predicted = [str(t) for t in truth], [str(p) for p in predicted]
        present = [label for label in labels if label in truth]
        result: dict[str, Any] = {
            "n": len(truth),
            "accuracy": float(np.mean([t == p for t, p in zip(truth, predicted, strict=True)])),
            "macro_f1": f1_score(truth, predicted, labels=present, average="macro", zero_division=0),
            "recall": dict(
                zip(
                    present,
                    recall_score(truth, predicted, labels=present, average=None, zero_division=0),
                    strict=True,
                )
            ),
        }
    else:
        binarizer = MultiLabelBinarizer(classes=labels)
        true_ind = binarizer.fit_transform([list(t) for t in truth])
        pred_ind = binarizer.transform([list(p) for p in predicted])
        columns = [j for j in range(len(labels)) if true_ind[:, j].any()]
        result = {
            "n": len(truth),
            "accuracy": float((true_ind == pred_ind).all(axis=1).mean()),
            # Nothing to find and nothing found is a perfect score, not an undefined one.
            "micro_f1": f1_score(true_ind, pred_ind, average="micro", zero_division=1.0),
            "recall": {labels[j]: float(pred_ind[true_ind[:, j] == 1, j].mean()) for j in columns},
        }
    negative = [not task.is_flagged(t) for t in truth]
    flagged = [task.is_flagged(p) for p, neg in zip(predicted, negative, strict=True) if neg]
    result["n_negative"] = len(flagged)
    result["fpr"] = float(np.mean(flagged)) if flagged else None
    return result
