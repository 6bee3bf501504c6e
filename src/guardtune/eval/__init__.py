"""Evaluation: metrics dicts, plots and markdown/terminal reports for guardtune classifiers."""

from guardtune.eval.metrics import multi_label_metrics, single_label_metrics
from guardtune.eval.plots import plot_confusion_matrix, plot_precision_recall
from guardtune.eval.report import errors_frame, metrics_markdown, metrics_rich_table, write_report

__all__ = [
    "errors_frame",
    "metrics_markdown",
    "metrics_rich_table",
    "multi_label_metrics",
    "plot_confusion_matrix",
    "plot_precision_recall",
    "single_label_metrics",
    "write_report",
]
