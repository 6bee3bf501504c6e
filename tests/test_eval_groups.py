"""Per-group metrics: accuracy, F1, recall and false-positive rate for each family or source."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guardtune.errors import GuardtuneError
from guardtune.eval import group_metrics, metrics_markdown, multi_label_metrics
from guardtune.task import load_task


def one_hot(labels: list[str], rows: list[str]) -> np.ndarray:
    return np.array([[float(row == label) for label in labels] for row in rows])


def test_single_label_groups_count_flags_against_the_negative_outcome() -> None:
    task = load_task("pii-intent")
    groups = ["words", "words", "words", "words", "core", "core", "core"]
    truth = ["none", "none", "none", "none", "asking", "giving", "none"]
    predicted = ["none", "asking", "none", "none", "asking", "none", "none"]
    result = group_metrics(task, groups, truth, predicted, one_hot(task.label_names, predicted), "family")
    words, core = result["metrics"]["words"], result["metrics"]["core"]
    assert result["column"] == "family" and list(result["metrics"]) == ["words", "core"]
    # Macro-F1 averages over the labels the group holds: the label it was mistaken for does not count.
    assert words == {
        "n": 4, "accuracy": 0.75, "macro_f1": pytest.approx(6 / 7), "recall": {"none": 0.75},
        "n_negative": 4, "fpr": 0.25,
    }  # fmt: skip
    assert core["accuracy"] == pytest.approx(2 / 3)
    assert core["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert core["recall"] == {"none": 1.0, "asking": 1.0, "giving": 0.0}
    assert core["n_negative"] == 1 and core["fpr"] == 0.0
    assert result["weakest"] == "core"
    json.dumps(result)  # plain JSON, ready for metrics.json


def test_multi_label_groups_use_exact_match_and_flag_any_label() -> None:
    task = load_task("pii-categories")
    groups = ["a", "a", "a", "b", "b"]
    truth = [[], ["S1"], ["S1", "S3"], [], []]
    predicted = [["S5"], ["S1"], ["S1"], [], []]
    scores = np.zeros((5, 5))
    result = group_metrics(task, groups, truth, predicted, scores, "source")
    a, b = result["metrics"]["a"], result["metrics"]["b"]
    assert a["accuracy"] == pytest.approx(1 / 3)
    assert a["recall"] == {"S1": 1.0, "S3": 0.0}
    assert a["fpr"] == 1.0 and a["n_negative"] == 1
    # Nothing to find and nothing found: exact, with no F1 to report.
    assert b == {"n": 2, "accuracy": 1.0, "micro_f1": None, "recall": {}, "n_negative": 2, "fpr": 0.0}


def test_guard_task_groups_mask_unknown_categories_like_the_whole_file() -> None:
    # An unsafe row that names no category says nothing about the categories: a predicted
    # category there is not an error, in a group as in the whole file.
    task = load_task("moderation")
    truth = [["unsafe"], ["unsafe", "hate"], []]
    predicted = [["unsafe", "violence"], ["unsafe", "hate"], []]
    scores = np.full((3, len(task.label_names)), 0.1)
    whole = multi_label_metrics(task.label_names, truth, predicted, scores, task.known_mask(truth))
    group = group_metrics(task, ["x", "x", "x"], truth, predicted, scores, "source")["metrics"]["x"]
    assert group["micro_f1"] == pytest.approx(whole["micro_f1"]) == 1.0
    assert group["recall"] == {"unsafe": 1.0, "hate": 1.0}
    assert group["fpr"] == 0.0 and group["n_negative"] == 1


def test_a_group_without_negative_rows_has_no_false_positive_rate() -> None:
    task = load_task("pii-intent")
    predicted = ["asking", "none"]
    result = group_metrics(
        task, ["x", None], ["asking", "giving"], predicted, one_hot(task.label_names, predicted), "g"
    )
    assert result["metrics"]["x"]["fpr"] is None and result["metrics"]["x"]["n_negative"] == 0
    assert "(none)" in result["metrics"]


def test_mismatched_lengths_raise_one_line() -> None:
    with pytest.raises(GuardtuneError, match="found 2, 1, 1 and 1"):
        group_metrics(load_task("pii-intent"), ["a", "b"], ["none"], ["none"], np.ones((1, 3)), "family")


def test_markdown_lists_groups_weakest_first() -> None:
    task = load_task("pii-intent")
    predicted = ["none", "giving"]
    groups = group_metrics(
        task, ["good", "bad"], ["none", "none"], predicted, one_hot(task.label_names, predicted), "family"
    )
    metrics = {
        "n": 2, "accuracy": 0.5, "per_class": {},
        "confusion_matrix": {"labels": ["none"], "matrix": [[1]]}, "groups": groups,
    }  # fmt: skip
    text = metrics_markdown(metrics)
    assert "## By family" in text and "Weakest: **bad**" in text
    assert text.index("| bad |") < text.index("| good |")
