"""Confusion-matrix, precision-recall and reliability plots written as PNG files.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so there is no global
figure state: plotting from several threads is safe and nothing leaks between calls.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

# Only pick a backend when pyplot has not chosen one yet: switching under a running notebook or
# GUI would close its figures. Figure.savefig below does not depend on the backend anyway.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve

from guardtune.atomic import atomic_file
from guardtune.errors import GuardtuneError
from guardtune.eval.calibration import N_BINS, expected_calibration_error, reliability_curve
from guardtune.task import Mode

DPI = 120
_GRID_COLUMNS = 4


def plot_confusion_matrix(metrics: dict[str, Any], path: Path, title: str = "") -> Path:
    """Draw ``metrics["confusion_matrix"]`` as a heatmap with counts and save it to ``path``.

    Single-label metrics give one square matrix (rows true, columns predicted); multi-label
    metrics give a grid of 2x2 matrices, one per label.
    """
    cm = metrics["confusion_matrix"]
    labels = [str(label) for label in cm["labels"]]
    matrix = np.asarray(cm["matrix"], dtype=int)
    if matrix.ndim == 3:
        fig = _multi_label_grid(labels, matrix, title)
    elif matrix.shape == (len(labels), len(labels)):
        side = max(4.5, 0.7 * len(labels) + 2.5)
        fig = Figure(figsize=(side + 1.0, side), dpi=DPI)
        ax = fig.add_subplot()
        _heatmap(ax, matrix, labels, labels, colorbar=True)
        ax.set_title(title or "Confusion matrix")
    else:
        raise GuardtuneError(
            f"plot_confusion_matrix: expected a square matrix over {len(labels)} labels "
            f"or one 2x2 matrix per label, found shape {matrix.shape}"
        )
    fig.tight_layout()
    return _save(fig, path)


def plot_precision_recall(
    labels: list[str],
    y_true_indicator: np.ndarray,
    scores: np.ndarray,
    path: Path,
    title: str = "",
) -> Path:
    """One precision-recall curve per label (AP in the legend), saved to ``path``.

    Args:
        labels: label names, in the column order of both matrices.
        y_true_indicator: ``(rows, labels)`` 0/1 gold matrix (one-hot for single-label tasks).
        scores: ``(rows, labels)`` probabilities.
        path: PNG file to write.
        title: figure title.

    Labels without positives in ``y_true_indicator`` have no curve and are skipped.
    """
    truth = np.asarray(y_true_indicator).astype(int)
    score_matrix = np.asarray(scores, dtype=float)
    expected = (truth.shape[0], len(labels))
    if truth.shape != expected or score_matrix.shape != expected:
        raise GuardtuneError(
            f"plot_precision_recall: expected y_true_indicator and scores of shape {expected}, "
            f"found {truth.shape} and {score_matrix.shape}"
        )
    fig = Figure(figsize=(7, 5.5), dpi=DPI)
    ax = fig.add_subplot()
    skipped = []
    for j, label in enumerate(labels):
        if not truth[:, j].any():
            skipped.append(label)
            continue
        precision, recall, _ = precision_recall_curve(truth[:, j], score_matrix[:, j])
        ap = average_precision_score(truth[:, j], score_matrix[:, j])
        # Step drawing matches how average precision integrates the curve.
        ax.plot(recall, precision, drawstyle="steps-post", label=f"{label} (AP={ap:.3f})")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    # A small margin keeps curves lying on precision 1 or recall 1 visible against the frame.
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(0.0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Precision-recall")
    note = "no positives: " + ", ".join(skipped) if skipped else None
    if len(skipped) < len(labels):
        ax.legend(loc="lower left", fontsize="small", title=note, title_fontsize="x-small")
    elif note:
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(
    y_true_indicator: np.ndarray,
    score_sets: dict[str, np.ndarray],
    mode: Mode,
    path: Path,
    title: str = "",
    n_bins: int = N_BINS,
) -> Path:
    """Reliability diagram: observed frequency against mean confidence per bin, one curve per score set.

    Args:
        y_true_indicator: ``(rows, labels)`` 0/1 gold matrix.
        score_sets: curve name -> ``(rows, labels)`` probabilities, e.g. ``{"uncalibrated": raw,
            "calibrated": scores}``; the ECE of each goes in the legend.
        mode: ``single`` (top-class confidence) or ``multi`` (every label probability).
        path: PNG file to write.
        title: figure title.
        n_bins: equal-width bins on [0, 1].
    """
    fig = Figure(figsize=(6, 5.5), dpi=DPI)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfectly calibrated")
    for name, scores in score_sets.items():
        prob_pred, prob_true, _counts = reliability_curve(scores, y_true_indicator, mode, n_bins)
        ece = expected_calibration_error(scores, y_true_indicator, mode, n_bins)
        ax.plot(prob_pred, prob_true, marker="o", label=f"{name} (ECE={ece:.3f})")
    what = "top-class confidence" if mode == "single" else "label probability"
    ax.set_xlabel(f"Mean predicted {what} ({n_bins} bins)")
    ax.set_ylabel("Observed frequency" if mode == "multi" else "Accuracy")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.05)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title or "Reliability")
    fig.tight_layout()
    return _save(fig, path)


def plot_groups(groups: dict[str, Any], path: Path, title: str = "") -> Path:
    """Accuracy and false-positive rate per group (``metrics["groups"]``) as horizontal bars.

    Groups are sorted weakest first, so the family a guard fails on is at the top.
    """
    per_group = groups.get("metrics") or {}
    if not per_group:
        raise GuardtuneError("plot_groups: expected at least one group in groups['metrics']")
    names = sorted(per_group, key=lambda g: per_group[g]["accuracy"])
    accuracy = [per_group[g]["accuracy"] for g in names]
    fpr = [per_group[g]["fpr"] if per_group[g]["fpr"] is not None else math.nan for g in names]
    height = max(2.5, 0.45 * len(names) + 1.5)
    fig = Figure(figsize=(8, height), dpi=DPI)
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y - 0.2, accuracy, height=0.4, label="accuracy")
    ax.barh(y + 0.2, fpr, height=0.4, label="false-positive rate")
    for i, (acc, rate) in enumerate(zip(accuracy, fpr, strict=True)):
        ax.text(min(acc, 0.98), i - 0.2, f"{acc:.2f}", va="center", ha="right", fontsize=8, color="white")
        if not math.isnan(rate):
            ax.text(rate + 0.01, i + 0.2, f"{rate:.2f}", va="center", fontsize=8)
    labels = [f"{g} (n={per_group[g]['n']})" for g in names]
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or f"By {groups.get('column', 'group')}")
    fig.tight_layout()
    return _save(fig, path)


def _multi_label_grid(labels: list[str], matrices: np.ndarray, title: str) -> Figure:
    columns = min(_GRID_COLUMNS, len(labels))
    rows = math.ceil(len(labels) / columns)
    fig = Figure(figsize=(2.8 * columns, 2.7 * rows + 0.6), dpi=DPI)
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(labels):
            ax.set_visible(False)
            continue
        _heatmap(ax, matrices[k], ["no", "yes"], ["no", "yes"], colorbar=False)
        ax.set_title(labels[k])
    fig.suptitle(title or "Confusion matrix per label")
    return fig


def _heatmap(
    ax: Axes, matrix: np.ndarray, row_labels: list[str], col_labels: list[str], colorbar: bool
) -> None:
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    threshold = matrix.max() / 2.0
    for (i, j), count in np.ndenumerate(matrix):
        # White text on dark cells, black on light ones, so every count stays readable.
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > threshold else "black",
        )
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    if len(col_labels) > 4:
        ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    if colorbar and ax.figure is not None:
        ax.figure.colorbar(image, ax=ax)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI)
    return path
