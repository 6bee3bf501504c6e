"""Scoring labelled rows: ``evaluate`` (a report directory) and ``calibrate`` (temperature and
thresholds stored with the model)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from guardtune.atomic import atomic_dir
from guardtune.classifier import Classifier
from guardtune.data.readers import Examples, load_examples
from guardtune.errors import GuardtuneError
from guardtune.eval import (
    Calibration,
    errors_frame,
    expected_calibration_error,
    fit_calibration,
    group_metrics,
    multi_label_metrics,
    plot_confusion_matrix,
    plot_groups,
    plot_precision_recall,
    plot_reliability,
    single_label_metrics,
    write_report,
)
from guardtune.eval.calibration import objective_for, threshold_labels
from guardtune.modeldir import read_manifest


@dataclass
class _Scored:
    metrics: dict[str, Any]
    decided: list[Any]
    scores: np.ndarray
    raw_scores: np.ndarray
    truth: np.ndarray


def _score(classifier: Classifier, rows: Examples, progress: bool = False) -> _Scored:
    """Score labelled rows once: metrics on the calibrated scores, ECE before and after."""
    if rows.labels is None:
        raise GuardtuneError(f"{rows.source}: no {classifier.task.label_column!r} column to evaluate against")
    raw = classifier.predict_proba(rows.texts, progress=progress, calibrated=False)
    scores = classifier.calibrate_scores(raw)
    task = classifier.task
    decided = task.decide(scores)
    if task.mode == "single":
        metrics = single_label_metrics(classifier.labels, rows.labels, decided, scores)  # type: ignore[arg-type]
    else:
        known = task.known_mask(rows.labels)
        metrics = multi_label_metrics(classifier.labels, rows.labels, decided, scores, known)  # type: ignore[arg-type]
    truth = _indicator(classifier.labels, rows.labels, task.mode)
    # A guard's categories are unknown on some rows; its calibration is judged on the overall label.
    judged = [classifier.labels.index(task.overall)] if task.overall else slice(None)
    metrics["ece"] = expected_calibration_error(scores[:, judged], truth[:, judged], task.mode)
    if classifier.calibration is not None:
        metrics["ece_uncalibrated"] = expected_calibration_error(raw[:, judged], truth[:, judged], task.mode)
    return _Scored(metrics, decided, scores, raw, truth)


def score_examples(
    classifier: Classifier, rows: Examples, progress: bool = False
) -> tuple[dict[str, Any], list[Any], np.ndarray]:
    """Metrics (``metrics.json`` contract plus ``ece``), decided labels and scores for labelled rows."""
    scored = _score(classifier, rows, progress=progress)
    return scored.metrics, scored.decided, scored.scores


def _indicator(labels: list[str], gold: list[Any], mode: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(labels)}
    matrix = np.zeros((len(gold), len(labels)), dtype=int)
    for row, value in enumerate(gold):
        for name in [value] if mode == "single" else value:
            matrix[row, index[name]] = 1
    return matrix


def evaluate(
    model: str | Path | Classifier,
    data: str | Path,
    out: str | Path,
    title: str | None = None,
    progress: bool = True,
    group_by: str | None = None,
) -> dict[str, Any]:
    """Evaluate a model on a labelled file and write a report directory.

    Writes ``metrics.json``, ``report.md``, ``confusion_matrix.png``, ``precision_recall.png``,
    ``reliability.png`` (before and after calibration when the model is calibrated) and
    ``errors.csv`` (every misclassified row with its scores) into ``out``, all at once. With
    groups (``group_by``, or a ``family`` column in the file), also per-group metrics in
    ``metrics.json["groups"]``, a table in ``report.md`` and ``groups.png``.

    Args:
        group_by: a column of the file whose values group the rows (e.g. ``source``); default:
            ``family`` when the file has that column (synthetic data does), else no groups.

    Returns:
        The metrics dictionary (the ``metrics.json`` contract, plus ``ece`` and, for a calibrated
        model, ``ece_uncalibrated``; ``groups`` with groups).

    Raises:
        GuardtuneError: an unreadable or invalid file, or a ``group_by`` column it does not have.

    Example:
        >>> metrics = evaluate("runs/pii", "check.csv", "reports/check")  # doctest: +SKIP
        >>> metrics["groups"]["weakest"]  # doctest: +SKIP
        'pii-words'
    """
    classifier = model if isinstance(model, Classifier) else Classifier.load(model)
    rows = load_examples(data, classifier.task)
    group_column = _group_column(rows, group_by)
    scored = _score(classifier, rows, progress=progress)
    metrics, decided, scores = scored.metrics, scored.decided, scored.scores
    images = ["confusion_matrix.png", "precision_recall.png", "reliability.png"]
    if group_column is not None:
        groups = rows.frame[group_column].tolist()
        metrics["groups"] = group_metrics(
            classifier.task, groups, rows.labels or [], decided, scores, group_column
        )
        images.append("groups.png")
    out = Path(out)
    title = title or f"{classifier.task.name} on {Path(data).name}"
    mode = classifier.task.mode
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        plot_confusion_matrix(metrics, tmp / "confusion_matrix.png", title=title)
        plot_precision_recall(
            classifier.labels, scored.truth, scores, tmp / "precision_recall.png", title=title
        )
        curves = (
            {"uncalibrated": scored.raw_scores, "calibrated": scores}
            if classifier.calibration is not None
            else {"model": scores}
        )
        plot_reliability(scored.truth, curves, mode, tmp / "reliability.png", title=title)
        if "groups" in metrics:
            plot_groups(metrics["groups"], tmp / "groups.png", title=title)
        errors = errors_frame(rows.texts, rows.labels or [], decided, scores, classifier.labels)
        errors.to_csv(tmp / "errors.csv", index=False)
        write_report(
            tmp,
            metrics,
            title=title,
            extra_sections={
                "Model": f"`{classifier.directory}` ({classifier.manifest.method} on "
                f"`{classifier.manifest.base}`)",
                "Calibration": _calibration_summary(classifier.calibration, metrics, mode),
                "Errors": f"{len(errors)} of {len(rows)} rows misclassified; see `errors.csv`.",
            },
            images=images,
        )
    return metrics


def _group_column(rows: Examples, group_by: str | None) -> str | None:
    if group_by is None:
        return "family" if "family" in rows.frame.columns else None
    if group_by not in rows.frame.columns:
        found = ", ".join(map(str, rows.frame.columns))
        raise GuardtuneError(f"{rows.source}: no column {group_by!r} to group by (found columns: {found})")
    return group_by


def _calibration_summary(calibration: Calibration | None, metrics: dict[str, Any], mode: str) -> str:
    what = "top-class confidence" if mode == "single" else "every label probability"
    ece = f"Expected calibration error (15 equal-width bins, {what})"
    if calibration is None:
        return f"Not calibrated (see `guardtune calibrate`). {ece}: {metrics['ece']:.3f}."
    thresholds = ", ".join(f"{k} >= {v:.4f}" for k, v in calibration.thresholds.items()) or "none"
    return (
        f"Temperature {calibration.temperature:.3f}, fitted on {calibration.source or 'validation data'} "
        f"({calibration.n} rows). {ece}: {metrics['ece_uncalibrated']:.3f} uncalibrated, "
        f"{metrics['ece']:.3f} calibrated. Calibrated thresholds ({calibration.objective}): {thresholds}."
    )


def calibrate(
    model: str | Path | Classifier,
    data: str | Path,
    label: str | None = None,
    max_fpr: float | None = None,
    min_recall: float | None = None,
    dtype: str = "auto",
    progress: bool = True,
    save: bool = True,
    device: str = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[Any, str] | None = None,
) -> Calibration:
    """Fit temperature scaling and decision thresholds on labelled rows and store them with the model.

    The temperature minimises the negative log-likelihood of ``data`` (normally the validation
    split). Thresholds are chosen on the calibrated scores: by default the F1-maximising threshold
    per label; with ``max_fpr`` the highest recall whose false-positive rate on ``data`` is at most
    ``max_fpr``; with ``min_recall`` the highest precision whose recall is at least ``min_recall``.
    Which labels get a threshold: ``label`` if given; else the positive label of a two-label task
    (``unsafe``, or the second label); every label of a multi-label task; none for a single-label
    task with three or more labels (the most likely label decides).

    Args:
        model: a model directory or a loaded :class:`Classifier` (it is calibrated in place).
        data: labelled rows (CSV, JSONL, Parquet), not the test split.
        label: the label to threshold.
        max_fpr, min_recall: at most one target, each strictly between 0 and 1.
        dtype: ``auto``, ``bf16``, ``fp32`` or ``int8`` when ``model`` is a directory; the
            calibration records the precision it was fitted in.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda`` when ``model`` is a directory.
        device_map, max_memory: a base spread over several GPUs, when ``model`` is a directory
            (see :meth:`Classifier.load`).
        progress: show a progress bar while scoring.
        save: write ``calibration.json`` into the model directory.

    Returns:
        The :class:`Calibration`, with the rates it reaches on ``data`` in ``achieved``.

    Raises:
        GuardtuneError: both targets, a target outside (0, 1), an unknown label, a target the task
            policy cannot reach, or a label without positive or negative rows in ``data``.

    Example:
        >>> cal = calibrate("runs/moderation", "splits/val.csv", max_fpr=0.05)
        >>> cal.thresholds
        {'unsafe': 0.8312}
    """
    objective, target = objective_for(max_fpr, min_recall)
    # Check the label and the data before loading the base model.
    spec = model.manifest.task if isinstance(model, Classifier) else read_manifest(model).task
    threshold_labels(spec, objective, label)
    rows = load_examples(data, spec)
    with warnings.catch_warnings():
        # The calibration in another precision that Classifier.load warns about is being replaced.
        warnings.filterwarnings("ignore", message=".*calibrated on .* scores but the model runs in")
        classifier = (
            model
            if isinstance(model, Classifier)
            else Classifier.load(
                model, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory
            )
        )
    if save and classifier.directory is None:
        raise GuardtuneError("calibrate: the classifier has no model directory to write calibration.json to")
    assert rows.labels is not None
    raw = classifier.predict_proba(rows.texts, progress=progress, calibrated=False)
    truth = _indicator(spec.label_names, rows.labels, spec.mode)
    calibration = fit_calibration(
        spec,
        raw,
        truth,
        objective=objective,
        target=target,
        label=label,
        source=Path(data).name,
        known=spec.known_mask(rows.labels) if spec.overall else None,
    )
    calibration.precision = classifier.precision
    if save:
        assert classifier.directory is not None
        calibration.save(classifier.directory)
    classifier.calibration = calibration
    return calibration
