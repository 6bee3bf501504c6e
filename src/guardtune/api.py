"""The public Python API: ``Classifier.load / predict / predict_proba``, ``train``, ``evaluate``,
``calibrate``."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from tqdm.auto import tqdm
from transformers import set_seed
from transformers.utils import logging as hf_logging

from guardtune.atomic import atomic_dir
from guardtune.backbone import DEFAULT_BASE, Backbone, load_backbone, resolve_device
from guardtune.classifier import Classifier, Prediction
from guardtune.data.checks import check_training_labels
from guardtune.data.readers import Examples, iter_examples, label_counts, load_examples, soft_label_columns
from guardtune.data.splits import stratified_split
from guardtune.data.writers import ChunkedTableWriter, predictions_frame, write_table
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
from guardtune.eval.model_card import write_model_card
from guardtune.methods import get_method
from guardtune.modeldir import Manifest, read_manifest
from guardtune.task import TaskSpec, load_task

if TYPE_CHECKING:
    # The trainer pulls in transformers.Trainer (~230 MB resident); inference never needs it.
    from guardtune.train import FitResult, TrainSettings

__all__ = [
    "Classifier",
    "Prediction",
    "TrainReport",
    "calibrate",
    "evaluate",
    "label_file",
    "predict_file",
    "score_examples",
    "train",
]

console = Console(stderr=True)


@dataclass
class TrainReport:
    """What ``train`` produced: the model, its directory and how training went."""

    classifier: Classifier
    directory: Path
    fit: FitResult
    counts: dict[str, dict[str, int]]
    val_metrics: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    # Problems with the training data that did not stop training (printed as training starts).
    warnings: list[str] = field(default_factory=list)
    # False on the other processes of a multi-process run: they train but write and report nothing.
    main_process: bool = True


def _work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".incomplete")


def train(
    task: str | TaskSpec,
    train_path: str | Path,
    out: str | Path,
    val_path: str | Path | None = None,
    base: str = DEFAULT_BASE,
    method: str = "head",
    settings: TrainSettings | None = None,
    resume: bool = False,
    overwrite: bool = False,
    backbone: Backbone | None = None,
    allow_missing_labels: bool = False,
) -> TrainReport:
    """Train a classifier and write its model directory.

    Args:
        task: a built-in task name, a task YAML path, or a :class:`TaskSpec`.
        train_path: CSV, JSONL or Parquet training rows.
        out: model directory to write; it appears only when training succeeds.
        val_path: validation rows; without it 10% of the training rows are held out.
        base: HF directory, ``.gguf`` file, or ``gemma-3-270m``.
        method: a registered method name (see ``guardtune.methods.available_methods()``).
        settings: training hyper-parameters.
        resume: continue from the newest checkpoint of an interrupted run into the same ``out``.
        overwrite: replace ``out`` if it exists.
        backbone: an already loaded base model to train on.
        allow_missing_labels: train a single-label task even when some labels have no rows
            (a warning instead of an error).

    Raises:
        GuardtuneError: bad data, task or settings, each in one line; a single-label task whose
            training rows miss a label (unless ``allow_missing_labels``).
    """
    from guardtune.train import TrainSettings, fit, process_state

    spec = task if isinstance(task, TaskSpec) else load_task(task)
    settings = settings or TrainSettings()
    out = Path(out)
    if out.exists() and not overwrite:
        raise GuardtuneError(f"{out}: already exists (choose another --out or pass --overwrite)")
    method_cls = get_method(method)
    if backbone is None:
        resolve_device(settings.device)  # a missing GPU fails here, before data and processes
    train_rows = load_examples(train_path, spec)
    assert train_rows.labels is not None
    data_warnings = check_training_labels(spec, train_rows.labels, str(train_path), allow_missing_labels)
    notes = []
    if val_path is not None:
        val_rows: Examples | None = load_examples(val_path, spec)
    elif len(train_rows) >= 20:
        train_rows, val_rows = _hold_out(train_rows, settings.seed)
        notes.append(f"no --val given: held out {len(val_rows)} of the training rows for validation")
    else:
        val_rows = None
    assert train_rows.labels is not None
    counts = {"train": label_counts(spec, train_rows.labels)}
    if val_rows is not None and val_rows.labels is not None:
        counts["validation"] = label_counts(spec, val_rows.labels)
    work_dir = _work_dir(out)
    # Under `accelerate launch` / `torchrun` every process runs this function; only the main one
    # touches the file system, and the others wait for it where they would otherwise race.
    state = process_state(settings.device)
    if not state.is_main_process:
        hf_logging.disable_progress_bar()  # one set of loading bars, the main process's
    else:
        for warning in data_warnings:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    if state.is_main_process and work_dir.exists() and not resume:
        shutil.rmtree(work_dir)
    state.wait_for_everyone()
    if backbone is None:
        # The main process converts and caches a GGUF base first; the others then load the cache.
        with state.main_process_first():
            backbone = load_backbone(
                base, dtype=settings.dtype, device=settings.device, quantize=settings.quantize
            )
    set_seed(settings.seed)
    model = method_cls.create(backbone, spec, settings.lora, settings.max_length, train_rows.labels)
    result = fit(
        model,
        train_rows.texts,
        train_rows.labels,
        settings,
        work_dir,
        val_texts=val_rows.texts if val_rows else None,
        val_labels=val_rows.labels if val_rows else None,
        resume=resume,
        soft_labels=train_rows.soft_labels,
    )
    manifest = Manifest(
        task=spec,
        method=method,
        base=base,
        max_length=settings.max_length,
        lora=settings.lora.to_dict(),
        training={
            **{k: v for k, v in settings.to_dict().items() if k != "lora"},
            "steps": result.steps,
            "seconds": round(result.seconds, 1),
            "examples_per_second": round(result.examples_per_second, 2),
            "train_loss": result.train_loss,
            "counts": counts,
            "processes": result.processes,
            "global_batch_size": settings.batch_size * settings.gradient_accumulation * result.processes,
        },
    )
    classifier = Classifier(model, manifest)
    if not state.is_main_process:
        state.wait_for_everyone()  # returns once the main process has written the model directory
        return TrainReport(classifier, out, result, counts, None, notes, data_warnings, main_process=False)
    val_metrics = None
    if val_rows is not None and val_rows.labels is not None:
        val_metrics = score_examples(classifier, val_rows)[0]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save(tmp)
        manifest.write(tmp)
        write_model_card(tmp, manifest, {"validation": val_metrics} if val_metrics else {})
    shutil.rmtree(work_dir, ignore_errors=True)
    classifier.directory = out
    state.wait_for_everyone()
    return TrainReport(classifier, out, result, counts, val_metrics, notes, data_warnings)


def _hold_out(rows: Examples, seed: int) -> tuple[Examples, Examples]:
    assert rows.labels is not None
    train_idx, val_idx, _ = stratified_split(rows.labels, (0.9, 0.1, 0.0), seed=seed)
    return _subset(rows, train_idx), _subset(rows, val_idx)


def _subset(rows: Examples, indices: np.ndarray) -> Examples:
    labels = rows.labels
    return Examples(
        texts=[rows.texts[i] for i in indices],
        labels=[labels[i] for i in indices] if labels is not None else None,
        frame=rows.frame.iloc[indices].reset_index(drop=True),
        source=rows.source,
        soft_labels=rows.soft_labels[indices] if rows.soft_labels is not None else None,
    )


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
            model if isinstance(model, Classifier) else Classifier.load(model, dtype=dtype, device=device)
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


def label_file(model: str | Path | Classifier, data: str | Path, out: str | Path) -> pd.DataFrame:
    """Write a teacher's scores for every row of ``data``: the input columns plus ``p_<label>``.

    Rows without a gold label get the teacher's decision in the task's label column, so the file
    trains a student directly (``guardtune train --distill``).
    """
    classifier = model if isinstance(model, Classifier) else Classifier.load(model)
    task = classifier.task
    rows = load_examples(data, task, require_labels=False)
    scores = classifier.predict_proba(rows.texts, progress=True)
    frame = rows.frame.copy()
    if task.label_column not in frame.columns:
        decided = task.decide(scores)
        frame[task.label_column] = [",".join(x) if isinstance(x, list) else x for x in decided]
    for column, name in zip(soft_label_columns(task), task.label_names, strict=True):
        frame[column] = np.round(scores[:, task.label_names.index(name)].astype(np.float64), 6)
    if task.mode == "single":
        # Rounding must not push a row's sum outside the tolerance a student's reader checks.
        frame[soft_label_columns(task)] = frame[soft_label_columns(task)].div(
            frame[soft_label_columns(task)].sum(axis=1), axis=0
        )
    write_table(frame, out)
    return frame


def predict_file(
    model: str | Path | Classifier,
    data: str | Path,
    out: str | Path,
    batch_size: int = 32,
    chunk_rows: int = 4096,
    progress: bool = True,
) -> dict[str, int]:
    """Classify a file of any size, a chunk at a time, into ``out``.

    ``out`` gets the input columns plus ``label`` and one ``score_<label>`` column per label; it
    appears only when every row is done. Memory stays flat: rows are read, scored and written
    ``chunk_rows`` at a time.

    Returns:
        How many rows got each label.
    """
    classifier = model if isinstance(model, Classifier) else Classifier.load(model)
    counts: dict[str, int] = {}
    with (
        ChunkedTableWriter(Path(out)) as writer,
        tqdm(desc="Predicting", unit="msg", disable=not progress) as bar,
    ):
        for rows in iter_examples(data, classifier.task, chunk_rows=chunk_rows):
            scores = classifier.predict_proba(rows.texts, batch_size=batch_size)
            frame = predictions_frame(rows.frame, classifier.task, scores)
            writer.write(frame)
            for label in frame["label"]:
                counts[label] = counts.get(label, 0) + 1
            bar.update(len(frame))
    return counts
