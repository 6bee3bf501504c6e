"""Evaluation: metrics dicts, calibration and thresholds, plots and markdown/terminal reports.

Names load their module on first use (PEP 562), so ``guardtune.eval.calibration`` (needed to
apply a calibration at inference) imports neither matplotlib nor the metrics code.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guardtune.eval.calibration import (
        Calibration,
        calibrated_task,
        expected_calibration_error,
        fit_calibration,
        read_calibration,
    )
    from guardtune.eval.groups import group_metrics
    from guardtune.eval.metrics import multi_label_metrics, single_label_metrics
    from guardtune.eval.plots import (
        plot_confusion_matrix,
        plot_groups,
        plot_precision_recall,
        plot_reliability,
    )
    from guardtune.eval.report import (
        errors_frame,
        groups_rich_table,
        metrics_markdown,
        metrics_rich_table,
        write_report,
    )

_LAZY = {
    "Calibration": "guardtune.eval.calibration",
    "calibrated_task": "guardtune.eval.calibration",
    "expected_calibration_error": "guardtune.eval.calibration",
    "fit_calibration": "guardtune.eval.calibration",
    "read_calibration": "guardtune.eval.calibration",
    "group_metrics": "guardtune.eval.groups",
    "multi_label_metrics": "guardtune.eval.metrics",
    "single_label_metrics": "guardtune.eval.metrics",
    "plot_confusion_matrix": "guardtune.eval.plots",
    "plot_groups": "guardtune.eval.plots",
    "plot_precision_recall": "guardtune.eval.plots",
    "plot_reliability": "guardtune.eval.plots",
    "errors_frame": "guardtune.eval.report",
    "groups_rich_table": "guardtune.eval.report",
    "metrics_markdown": "guardtune.eval.report",
    "metrics_rich_table": "guardtune.eval.report",
    "write_report": "guardtune.eval.report",
}

__all__ = [
    "Calibration",
    "calibrated_task",
    "errors_frame",
    "expected_calibration_error",
    "fit_calibration",
    "group_metrics",
    "groups_rich_table",
    "metrics_markdown",
    "metrics_rich_table",
    "multi_label_metrics",
    "plot_confusion_matrix",
    "plot_groups",
    "plot_precision_recall",
    "plot_reliability",
    "read_calibration",
    "single_label_metrics",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'guardtune.eval' has no attribute {name!r}")
