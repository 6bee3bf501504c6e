"""Evaluation layer: metrics against hand-computed values, plots, markdown and report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from guardtune.errors import GuardtuneError
from guardtune.eval import (
    errors_frame,
    metrics_markdown,
    metrics_rich_table,
    multi_label_metrics,
    plot_confusion_matrix,
    plot_precision_recall,
    single_label_metrics,
    write_report,
)

# Any sklearn UndefinedMetricWarning would mean a zero_division or no-positives case slipped by.
pytestmark = pytest.mark.filterwarnings("error")

BASE_KEYS = {
    "n",
    "accuracy",
    "micro_f1",
    "macro_f1",
    "weighted_f1",
    "per_class",
    "confusion_matrix",
}
MULTI_KEYS = BASE_KEYS | {
    "exact_match",
    "hamming_loss",
    "f1_single_violation",
    "f1_multiple_violations",
    "fpr",
}
PER_CLASS_KEYS = {"precision", "recall", "f1", "support", "auprc"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 3 classes plus "d", which is neither true nor predicted anywhere.
#   confusion (rows true a, b, c; columns predicted a, b, c): [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
#   F1: a = 0.8 (P 1, R 2/3), b = 0.5, c = 2/3 (P 1/2, R 1)
SINGLE_LABELS = ["a", "b", "c", "d"]
SINGLE_TRUE = ["a", "a", "a", "b", "b", "c"]
SINGLE_PRED = ["a", "a", "b", "b", "c", "c"]
SINGLE_SCORES = np.array(
    [
        [0.9, 0.05, 0.05, 0.0],
        [0.8, 0.1, 0.1, 0.0],
        [0.3, 0.6, 0.1, 0.0],  # wrong: predicted b at 0.6
        [0.1, 0.8, 0.1, 0.0],
        [0.05, 0.15, 0.8, 0.0],  # wrong: predicted c at 0.8 (the most confident mistake)
        [0.1, 0.1, 0.8, 0.0],
    ]
)

# Multi-label, S4 never true nor predicted. Rows 0-1 are safe (row 1 is flagged: fpr 1/2);
# rows 2-3 have one violation, rows 4-5 two. Wrong cells: (1, S2), (3, S3), (5, S3).
MULTI_LABELS = ["S1", "S2", "S3", "S4"]
MULTI_TRUE: list[list[str]] = [[], [], ["S1"], ["S1"], ["S1", "S2"], ["S2", "S3"]]
MULTI_PRED: list[list[str]] = [[], ["S2"], ["S1"], ["S1", "S3"], ["S2", "S1"], ["S2"]]
MULTI_SCORES = np.array(
    [
        [0.1, 0.1, 0.1, 0.0],
        [0.1, 0.7, 0.1, 0.0],  # false S2 at 0.7
        [0.9, 0.1, 0.1, 0.0],
        [0.8, 0.2, 0.55, 0.0],  # false S3 at 0.55
        [0.9, 0.8, 0.2, 0.0],
        [0.1, 0.9, 0.05, 0.0],  # missed S3 at 0.05: wrong with confidence 0.95
    ]
)


@pytest.fixture
def single() -> dict:
    return single_label_metrics(SINGLE_LABELS, SINGLE_TRUE, SINGLE_PRED, SINGLE_SCORES)


@pytest.fixture
def multi() -> dict:
    return multi_label_metrics(MULTI_LABELS, MULTI_TRUE, MULTI_PRED, MULTI_SCORES)


def test_single_label_known_values(single: dict) -> None:
    assert single["n"] == 6
    assert single["accuracy"] == pytest.approx(4 / 6)
    assert single["micro_f1"] == pytest.approx(4 / 6)
    assert single["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert single["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert single["confusion_matrix"] == {
        "labels": SINGLE_LABELS,
        "matrix": [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]],
    }
    a, b, c = (single["per_class"][x] for x in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((1, 2 / 3, 0.8, 3))
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((0.5, 1, 2 / 3, 1))
    # a's positives outrank every negative; b ranks +, -, + so AP = (1 + 2/3) / 2.
    assert a["auprc"] == pytest.approx(1.0)
    assert b["auprc"] == pytest.approx((1 + 2 / 3) / 2)
    assert "fpr" not in single


def test_label_without_positives_gives_none_auprc_and_is_left_out_of_macro(single: dict) -> None:
    d = single["per_class"]["d"]
    assert d == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "auprc": None}
    # Counting d as F1 0 would give (0.8 + 0.5 + 2/3) / 4.
    assert single["macro_f1"] != pytest.approx((0.8 + 0.5 + 2 / 3) / 4)


def test_multi_label_known_values(multi: dict) -> None:
    assert multi["n"] == 6
    assert multi["exact_match"] == pytest.approx(0.5)
    assert multi["accuracy"] == multi["exact_match"]
    assert multi["hamming_loss"] == pytest.approx(3 / 24)
    assert multi["fpr"] == pytest.approx(0.5)
    # Rows with one violation: S1 is always right and S3's false alarm has no support.
    assert multi["f1_single_violation"] == pytest.approx(1.0)
    # Rows with two: S1 F1 1 (support 1), S2 F1 1 (support 2), S3 F1 0 (support 1).
    assert multi["f1_multiple_violations"] == pytest.approx(3 / 4)
    # S1 F1 1, S2 F1 0.8 (tp 2, fp 1), S3 F1 0; micro: tp 5, fp 2, fn 1.
    assert multi["micro_f1"] == pytest.approx(10 / 13)
    assert multi["macro_f1"] == pytest.approx(0.6)
    assert multi["weighted_f1"] == pytest.approx((3 * 1 + 2 * 0.8) / 6)
    assert multi["confusion_matrix"] == {
        "labels": MULTI_LABELS,
        "matrix": [
            [[3, 0], [0, 3]],
            [[3, 1], [0, 2]],
            [[4, 1], [1, 0]],
            [[6, 0], [0, 0]],
        ],
    }
    s2 = multi["per_class"]["S2"]
    assert (s2["precision"], s2["recall"], s2["f1"], s2["support"]) == pytest.approx((2 / 3, 1, 0.8, 2))
    assert multi["per_class"]["S1"]["auprc"] == pytest.approx(1.0)
    assert multi["per_class"]["S4"]["auprc"] is None


def test_multi_label_without_safe_or_multi_violation_rows_gives_none() -> None:
    metrics = multi_label_metrics(["x", "y"], [["x"], ["y"]], [["x"], []], np.array([[0.9, 0.1]] * 2))
    assert metrics["fpr"] is None
    assert metrics["f1_multiple_violations"] is None
    assert metrics["f1_single_violation"] == pytest.approx(0.5)  # x F1 1, y F1 0


def test_safe_unsafe_fpr_any_label_order() -> None:
    y_true = ["safe", "safe", "safe", "safe", "unsafe", "unsafe"]
    y_pred = ["safe", "unsafe", "safe", "safe", "unsafe", "safe"]
    scores = np.full((6, 2), 0.5)
    for labels in (["safe", "unsafe"], ["unsafe", "safe"]):
        metrics = single_label_metrics(labels, y_true, y_pred, scores)
        assert set(metrics) == BASE_KEYS | {"fpr"}
        assert metrics["fpr"] == pytest.approx(1 / 4)
    only_unsafe = single_label_metrics(["safe", "unsafe"], ["unsafe"], ["safe"], np.array([[0.6, 0.4]]))
    assert only_unsafe["fpr"] is None


def test_contract_keys_and_json(single: dict, multi: dict) -> None:
    assert set(single) == BASE_KEYS
    assert set(multi) == MULTI_KEYS
    for metrics, labels in ((single, SINGLE_LABELS), (multi, MULTI_LABELS)):
        assert list(metrics["per_class"]) == labels
        assert all(set(v) == PER_CLASS_KEYS for v in metrics["per_class"].values())
        assert set(metrics["confusion_matrix"]) == {"labels", "matrix"}
        # allow_nan=False fails on any NaN that was not turned into None.
        assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
        assert isinstance(metrics["n"], int)
        assert isinstance(metrics["accuracy"], float)


def test_bad_inputs_raise_guardtune_error() -> None:
    with pytest.raises(GuardtuneError, match="not in the task"):
        single_label_metrics(["a", "b"], ["a", "z"], ["a", "b"], np.zeros((2, 2)))
    with pytest.raises(GuardtuneError, match="not in the task"):
        multi_label_metrics(["a", "b"], [["a"]], [["safe"]], np.zeros((1, 2)))
    with pytest.raises(GuardtuneError, match="shape"):
        single_label_metrics(["a", "b"], ["a"], ["a"], np.zeros((1, 3)))
    with pytest.raises(GuardtuneError, match="no rows"):
        multi_label_metrics(["a"], [], [], np.zeros((0, 1)))


def _assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_plots_write_png_files(tmp_path: Path, single: dict, multi: dict) -> None:
    cm_single = plot_confusion_matrix(single, tmp_path / "cm_single.png", title="3 classes")
    cm_multi = plot_confusion_matrix(multi, tmp_path / "plots" / "cm_multi.png")
    one_hot = np.array([[y == label for label in SINGLE_LABELS] for y in SINGLE_TRUE], dtype=int)
    pr_single = plot_precision_recall(SINGLE_LABELS, one_hot, SINGLE_SCORES, tmp_path / "pr.png")
    indicator = np.array([[label in row for label in MULTI_LABELS] for row in MULTI_TRUE])
    pr_multi = plot_precision_recall(MULTI_LABELS, indicator, MULTI_SCORES, tmp_path / "prm.png")
    for path in (cm_single, cm_multi, pr_single, pr_multi):
        _assert_png(path)
    # Overwriting an existing plot goes through the same temp-and-rename path.
    _assert_png(plot_confusion_matrix(single, cm_single))


def test_errors_frame_single_label() -> None:
    texts = [f"text {i}" for i in range(1, 7)]
    frame = errors_frame(texts, SINGLE_TRUE, SINGLE_PRED, SINGLE_SCORES, SINGLE_LABELS)
    assert list(frame.columns) == [
        "row",
        "text",
        "true",
        "predicted",
        "score_a",
        "score_b",
        "score_c",
        "score_d",
    ]
    # Row 5 (predicted c at 0.8) is a more confident mistake than row 3 (b at 0.6).
    assert frame["row"].tolist() == [5, 3]
    assert frame["text"].tolist() == ["text 5", "text 3"]
    assert frame["true"].tolist() == ["b", "a"]
    assert frame["predicted"].tolist() == ["c", "b"]
    assert frame["score_c"].tolist() == pytest.approx([0.8, 0.1])


def test_errors_frame_multi_label() -> None:
    texts = [f"t{i}" for i in range(6)]
    frame = errors_frame(texts, MULTI_TRUE, MULTI_PRED, MULTI_SCORES, MULTI_LABELS)
    # Missed S3 at 0.05 (0.95) > false S2 at 0.7 > false S3 at 0.55; row 5 matches despite order.
    assert frame["row"].tolist() == [6, 2, 4]
    assert frame["true"].tolist() == ["S2,S3", "", "S1"]
    assert frame["predicted"].tolist() == ["S2", "S2", "S1,S3"]


def test_errors_frame_no_errors_has_columns() -> None:
    frame = errors_frame(["x"], ["a"], ["a"], np.array([[0.9, 0.1]]), ["a", "b"])
    assert frame.empty
    assert list(frame.columns) == ["row", "text", "true", "predicted", "score_a", "score_b"]


def test_metrics_markdown_single(single: dict) -> None:
    text = metrics_markdown(single)
    assert "| macro F1 | 0.656 |" in text
    assert "| a | 1.000 | 0.667 | 0.800 | 3 | 1.000 |" in text
    assert "| d | 0.000 | 0.000 | 0.000 | 0 | n/a |" in text
    assert "| true \\ predicted | a | b | c | d |" in text
    assert "| a | 2 | 1 | 0 | 0 |" in text
    assert "exact match" not in text


def test_metrics_markdown_multi(multi: dict) -> None:
    text = metrics_markdown(multi)
    assert "| exact match | 0.500 |" in text
    assert "| weighted F1, 2+ violations | 0.750 |" in text
    assert "| false-positive rate | 0.500 |" in text
    assert "| label | tn | fp | fn | tp |" in text
    assert "| S2 | 3 | 1 | 0 | 2 |" in text


def test_metrics_rich_table(multi: dict) -> None:
    console = Console(record=True, width=140)
    console.print(metrics_rich_table(multi, title="pii"))
    text = console.export_text()
    for expected in ("pii", "S1", "S4", "hamming loss", "exact match", "0.125", "n/a"):
        assert expected in text


def test_write_report(tmp_path: Path, single: dict) -> None:
    out = tmp_path / "run"
    image = plot_confusion_matrix(single, out / "confusion_matrix.png")
    path = write_report(
        out,
        single,
        "Eval of tiny",
        extra_sections={"Errors": "| row | text |\n|---|---|\n| 5 | text 5 |"},
        images=[image.name, str(image)],
    )
    assert path == out / "report.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Eval of tiny\n")
    assert text.count("![confusion_matrix](confusion_matrix.png)") == 2
    assert text.index("## Summary") < text.index("![confusion") < text.index("## Errors")
    assert "| 5 | text 5 |" in text
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "report.md"]


def test_failed_plot_leaves_old_file_and_no_temp(tmp_path: Path, single: dict) -> None:
    target = tmp_path / "cm.nosuchformat"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(ValueError, match="not supported"):
        plot_confusion_matrix(single, target)
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
