"""The commands that train: ``train``, ``label`` (a teacher's soft labels) and ``compare``.

``train`` and ``compare`` take the same training options (see :mod:`guardtune.cli_options`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from guardtune.backbone import DEFAULT_BASE
from guardtune.cli_options import BaseOption, TaskOption, out, training_options
from guardtune.train_settings import TrainSettings


@training_options
def train(
    *,
    task: TaskOption,
    train_file: Annotated[Path, typer.Option("--train", help="Training rows (CSV, JSONL, Parquet).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    val_file: Annotated[
        Path | None, typer.Option("--val", help="Validation rows; default: 10% of --train.")
    ] = None,
    base: BaseOption = DEFAULT_BASE,
    method: Annotated[
        str | None,
        typer.Option(
            help="A registered method (`guardtune methods` lists them); default: the one marked there."
        ),
    ] = None,
    settings: TrainSettings,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run into the same --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    allow_missing_labels: Annotated[
        bool,
        typer.Option(
            help="Train even if a label of a single-label task has no training rows (else an error)."
        ),
    ] = False,
) -> None:
    """Train a LoRA classifier and write its model directory."""
    from guardtune.api import train as train_model
    from guardtune.eval import metrics_rich_table
    from guardtune.methods import DEFAULT_METHOD

    report = train_model(
        task,
        train_file,
        out_dir,
        val_path=val_file,
        base=base,
        method=method or DEFAULT_METHOD,
        settings=settings,
        resume=resume,
        overwrite=overwrite,
        allow_missing_labels=allow_missing_labels,
    )
    if not report.main_process:
        return  # under accelerate launch / torchrun the main process alone reports
    for note in report.notes:
        out.print(f"[yellow]{note}[/yellow]")
    if report.val_metrics:
        out.print(metrics_rich_table(report.val_metrics, title="Validation"))
    processes = f" on {report.fit.processes} processes" if report.fit.processes > 1 else ""
    out.print(
        f"Trained {report.fit.steps} steps{processes} in {report.fit.seconds:.0f} s "
        f"({report.fit.examples_per_second:.1f} examples/s). Model: {report.directory}"
    )


def label(
    model: Annotated[Path, typer.Option(help="Teacher model directory.")],
    data: Annotated[Path, typer.Option(help="Rows to score (CSV, JSONL, Parquet).")],
    out_file: Annotated[Path, typer.Option("--out", help="Output file with p_<label> columns.")],
) -> None:
    """Write a teacher's soft labels (p_<label> columns) for distilling into a student."""
    from guardtune.api import label_file

    frame = label_file(model, data, out_file)
    out.print(f"Wrote teacher scores for {len(frame)} rows to {out_file}")


@training_options
def compare(
    *,
    task: TaskOption,
    train_file: Annotated[Path, typer.Option("--train", help="Training rows.")],
    val_file: Annotated[Path, typer.Option("--val", help="Validation rows.")],
    test_file: Annotated[Path, typer.Option("--test", help="Test rows.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for models, reports and the table.")],
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods (default: every registered method).")
    ] = None,
    base: BaseOption = DEFAULT_BASE,
    settings: TrainSettings,
) -> None:
    """Train several methods on the same data and write one comparison table."""
    from guardtune.compare import compare_methods, comparison_markdown
    from guardtune.methods import available_methods
    from guardtune.task import load_task

    names = available_methods() if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    rows = compare_methods(
        task, train_file, val_file, test_file, out_dir, names, base=base, settings=settings
    )
    out.print(comparison_markdown(rows, load_task(task)))
    out.print(f"Table: {out_dir / 'compare.md'}")
