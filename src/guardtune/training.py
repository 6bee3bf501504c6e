"""``train``: a task, labelled rows and a base in, a model directory out.

The training loop itself (the Trainer, checkpoints, resume) is :mod:`guardtune.train`; this module
reads and checks the data, holds out validation rows, builds the method and writes the directory.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from transformers import set_seed
from transformers.utils import logging as hf_logging

from guardtune.atomic import atomic_dir
from guardtune.backbone import DEFAULT_BASE, Backbone, load_backbone, resolve_device
from guardtune.classifier import Classifier
from guardtune.data.checks import check_training_labels
from guardtune.data.readers import Examples, label_counts, load_examples
from guardtune.data.splits import stratified_split
from guardtune.errors import GuardtuneError
from guardtune.eval.model_card import write_model_card
from guardtune.evaluation import score_examples
from guardtune.methods import DEFAULT_METHOD, get_method
from guardtune.methods.base import check_method_settings
from guardtune.modeldir import Manifest
from guardtune.task import TaskSpec, load_task

if TYPE_CHECKING:
    # The trainer pulls in transformers.Trainer (~230 MB resident); inference never needs it.
    from guardtune.train import FitResult, TrainSettings

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
    method: str = DEFAULT_METHOD,
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
    check_method_settings(method_cls, settings)
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
    model = method_cls.create(
        backbone, spec, settings.lora, settings.max_length, train_rows.labels, readout=settings.readout
    )
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
