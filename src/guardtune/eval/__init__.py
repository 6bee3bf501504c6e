"""Evaluation: metrics dicts, calibration and thresholds, plots and markdown/terminal reports."""

from guardtune.eval.calibration import (
    Calibration,
    calibrated_task,
    expected_calibration_error,
    fit_calibration,
    read_calibration,
)
from guardtune.eval.metrics import multi_label_metrics, single_label_metrics
from guardtune.eval.plots import plot_confusion_matrix, plot_precision_recall, plot_reliability
from guardtune.eval.report import errors_frame, metrics_markdown, metrics_rich_table, write_report

__all__ = [
    "Calibration",
    "calibrated_task",
    "errors_frame",
    "expected_calibration_error",
    "fit_calibration",
    "metrics_markdown",
    "metrics_rich_table",
    "multi_label_metrics",
    "plot_confusion_matrix",
    "plot_precision_recall",
    "plot_reliability",
    "read_calibration",
    "single_label_metrics",
    "write_report",
]
