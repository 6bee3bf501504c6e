"""Metrics per group of rows (a ``family`` or ``source`` column): where a guard fails, not just how often.

A guard can score well overall and still fail a whole kind of text (greetings, warnings that mention
passwords, business e-mail). Each group is scored by the same functions as the whole file
(:func:`single_label_metrics`, :func:`multi_label_metrics`, unknown categories masked alike); a group
keeps accuracy (exact match for multi-label tasks), F1 (for single-label tasks the mean F1 of the
labels the group holds in truth, for multi-label tasks micro-F1), each gold label's recall, and the
false-positive rate: the share of rows that flag nothing in truth but are flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from guardtune.errors import GuardtuneError
from guardtune.eval.metrics import jsonable, multi_label_metrics, single_label_metrics
from guardtune.task import TaskSpec


def group_metrics(
    task: TaskSpec,
    groups: Sequence[Any],
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    scores: np.ndarray,
    column: str,
) -> dict[str, Any]:
    """Metrics per distinct value of ``groups``, groups in order of first appearance.

    Args:
        task: the task the labels belong to (its mode, unknown categories, "nothing flagged" outcome).
        groups: the group of each row (a missing value becomes the group ``(none)``).
        y_true: gold label (single) or label list (multi) per row.
        y_pred: decided label or label list per row.
        scores: ``(rows, labels)`` probabilities, as for the whole-file metrics.
        column: the name of the column the groups came from, recorded in the result.

    Returns:
        ``{"column": column, "metrics": {group: {n, accuracy, macro_f1 | micro_f1, recall,
        n_negative, fpr}}, "weakest": group}``; ``weakest`` has the lowest accuracy. F1 is ``None``
        for a multi-label group with nothing to find and nothing found.

    Raises:
        GuardtuneError: the sequences differ in length.

    Example:
        >>> group_metrics(task, ["chat", "mail"], ["none", "giving"], ["none", "none"], scores, "family")
        ... # doctest: +SKIP
    """
    if not len(groups) == len(y_true) == len(y_pred) == len(scores):
        raise GuardtuneError(
            f"group metrics: expected one group, gold value, prediction and score row per row; found "
            f"{len(groups)}, {len(y_true)}, {len(y_pred)} and {len(scores)}"
        )
    names = [_group_name(g) for g in groups]
    known = task.known_mask(list(y_true)) if task.mode == "multi" else None
    per_group: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(names):
        rows = np.array([i for i, g in enumerate(names) if g == name])
        per_group[name] = _one_group(
            task,
            [y_true[i] for i in rows],
            [y_pred[i] for i in rows],
            np.asarray(scores)[rows],
            known[rows] if known is not None else None,
        )
    weakest = min(per_group, key=lambda g: per_group[g]["accuracy"] or 0.0) if per_group else None
    return jsonable({"column": column, "metrics": per_group, "weakest": weakest})


def _group_name(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == "":
        return "(none)"
    return str(value)


def _one_group(
    task: TaskSpec, truth: list[Any], predicted: list[Any], scores: np.ndarray, known: np.ndarray | None
) -> dict[str, Any]:
    labels = task.label_names
    if task.mode == "single":
        full = single_label_metrics(labels, truth, predicted, scores)
        # A family often holds one gold label; averaging in the labels it was mistaken for (F1 0)
        # would halve its score for a single error, so the mean runs over the labels it holds.
        held = [m["f1"] for m in full["per_class"].values() if m["support"]]
        result = {"n": full["n"], "accuracy": full["accuracy"], "macro_f1": float(np.mean(held))}
    else:
        full = multi_label_metrics(labels, truth, predicted, scores, known)
        anything = any(truth) or any(predicted)
        result = {
            "n": full["n"],
            "accuracy": full["exact_match"],
            "micro_f1": full["micro_f1"] if anything else None,
        }
    result["recall"] = {label: m["recall"] for label, m in full["per_class"].items() if m["support"]}
    negative = [not task.is_flagged(t) for t in truth]
    flagged = [task.is_flagged(p) for p, neg in zip(predicted, negative, strict=True) if neg]
    result["n_negative"] = len(flagged)
    result["fpr"] = float(np.mean(flagged)) if flagged else None
    return result
