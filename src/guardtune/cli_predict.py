"""The commands that run a trained model on files: ``eval``, ``calibrate`` and ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from guardtune.batches import DEFAULT_MAX_BATCH_TOKENS, token_budget
from guardtune.cli_options import (
    CompileOption,
    DeviceMapOption,
    DeviceOption,
    InferenceDtypeOption,
    Int8RecheckOption,
    LabelledDataOption,
    MaxBatchTokensOption,
    MaxMemoryOption,
    ModelOption,
    out,
)
from guardtune.errors import GuardtuneError

if TYPE_CHECKING:
    from guardtune.classifier import Classifier

LONG_TEXT_OPTION = typer.Option(
    help="Texts over the max length: head-tail (keep both ends) or windows (score overlapping "
    "windows, keep the most flagged); default: the task's setting."
)


def _long_text(value: str | None) -> str | None:
    from guardtune.task import LONG_TEXT_MODES

    if value is not None and value not in LONG_TEXT_MODES:
        raise GuardtuneError(f"--long-text: expected one of {', '.join(LONG_TEXT_MODES)}, found {value!r}")
    return value


def eval_command(
    model: ModelOption,
    data: LabelledDataOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Report directory to write.")],
    dtype: InferenceDtypeOption = "auto",
    device: DeviceOption = "auto",
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    long_text: Annotated[str | None, LONG_TEXT_OPTION] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            help="Column whose values group rows for per-group metrics (default: family, if present)."
        ),
    ] = None,
    compiled: CompileOption = False,
    int8_recheck: Int8RecheckOption = None,
) -> None:
    """Evaluate a model: metrics.json, report.md, plots and errors.csv."""
    from guardtune.api import evaluate
    from guardtune.eval import groups_rich_table, metrics_rich_table

    reading = _long_text(long_text)
    classifier = _load(model, dtype, device, device_map, max_memory, compiled, int8_recheck)
    classifier.long_text = reading
    metrics = evaluate(classifier, data, out_dir, group_by=group_by)
    _say_rechecked(classifier, int8_recheck)
    out.print(metrics_rich_table(metrics, title=f"{data.name} (n={metrics['n']})"))
    if "groups" in metrics:
        out.print(groups_rich_table(metrics["groups"]))
    out.print(f"Report: {out_dir / 'report.md'}")


def calibrate(
    model: Annotated[Path, typer.Option(help="Model directory; calibration.json is written into it.")],
    data: Annotated[
        Path, typer.Option(help="Labelled validation rows (CSV, JSONL, Parquet), not the test set.")
    ],
    label: Annotated[
        str | None,
        typer.Option(help="Label to threshold; default: unsafe (or the 2nd label) of a 2-label task."),
    ] = None,
    max_fpr: Annotated[
        float | None, typer.Option(help="Highest recall with at most this false-positive rate.")
    ] = None,
    min_recall: Annotated[
        float | None, typer.Option(help="Highest precision with at least this recall.")
    ] = None,
    dtype: InferenceDtypeOption = "auto",
    device: DeviceOption = "auto",
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
) -> None:
    """Fit temperature scaling and thresholds (max F1 by default) on validation rows."""
    from guardtune.api import calibrate as calibrate_model

    cal = calibrate_model(
        model,
        data,
        label=label,
        max_fpr=max_fpr,
        min_recall=min_recall,
        dtype=dtype,
        device=device,
        device_map=device_map,
        max_memory=max_memory,
    )
    out.print(f"Temperature {cal.temperature:.3f} (fitted on {cal.n} rows of {data.name})")
    out.print(f"ECE (15 bins): {cal.ece_before:.3f} uncalibrated -> {cal.ece_after:.3f} calibrated")
    if cal.thresholds:
        goal = {"f1": "max F1", "max_fpr": f"FPR <= {cal.target}", "min_recall": f"recall >= {cal.target}"}
        table = Table(
            "label", "threshold", "precision", "recall", "FPR", title=f"Thresholds ({goal[cal.objective]})"
        )
        for name, threshold in cal.thresholds.items():
            rates = cal.achieved[name]
            table.add_row(
                name, f"{threshold:.4f}", *(_rate(rates.get(k)) for k in ("precision", "recall", "fpr"))
            )
        out.print(table)
    else:
        out.print("No thresholds: the most likely label decides (name one with --label).")
    for note in cal.notes:
        out.print(f"[yellow]{note}[/yellow]")
    out.print(f"Wrote {model / 'calibration.json'}")


def _load(
    model: Path,
    dtype: str,
    device: str,
    device_map: str | None,
    max_memory: str | None,
    compiled: bool,
    int8_recheck: float | None,
) -> Classifier:
    from guardtune.classifier import Classifier

    classifier = Classifier.load(
        model,
        dtype=dtype,
        device=device,
        device_map=device_map,
        max_memory=max_memory,
        compiled=compiled,
        int8_recheck=int8_recheck,
    )
    if compiled:
        out.print("--compile: the first batches compile the decoder (minutes on a few CPU cores)")
    return classifier


def _say_rechecked(classifier: Classifier, asked: float | None) -> None:
    if asked is None:
        return
    if classifier.recheck is None:
        out.print(f"--int8-recheck {asked}: off, the model runs in {classifier.precision} (int8 fell back)")
        return
    out.print(
        f"--int8-recheck {asked}: {classifier.rechecked} texts re-scored in "
        f"{classifier.method.backbone.float_precision}"
    )


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def predict(
    model: ModelOption,
    data: Annotated[
        Path, typer.Option(help="Rows to classify (CSV, JSONL, Parquet); with --engine ray also a folder.")
    ],
    out_file: Annotated[
        Path,
        typer.Option("--out", help="Output file (CSV, JSONL, Parquet); with --engine ray a new folder."),
    ],
    batch_size: Annotated[int, typer.Option(help="Most rows per forward pass.")] = 32,
    max_batch_tokens: MaxBatchTokensOption = DEFAULT_MAX_BATCH_TOKENS,
    dtype: InferenceDtypeOption = "auto",
    device: DeviceOption = "auto",
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data actors).")] = "local",
    output_format: Annotated[
        str, typer.Option("--format", help="ray engine: parquet or csv part files.")
    ] = "parquet",
    actors: Annotated[int, typer.Option(help="ray engine: actors, each holding the model once.")] = 2,
    address: Annotated[
        str | None, typer.Option(help="ray engine: cluster to join (default: start Ray on this machine).")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="ray engine: CPUs of the local Ray (default: all).")
    ] = None,
    cpus_per_actor: Annotated[float, typer.Option(help="ray engine: CPUs reserved per actor.")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(help="ray engine: GPUs reserved per actor.")] = 0.0,
    long_text: Annotated[str | None, LONG_TEXT_OPTION] = None,
    compiled: CompileOption = False,
    int8_recheck: Int8RecheckOption = None,
) -> None:
    """Classify a file: the input columns plus `label` and one `score_<label>` column per label."""
    from guardtune.predict_files import predict_file

    reading = _long_text(long_text)
    budget = token_budget(max_batch_tokens)
    if reading is not None and engine != "local":
        raise GuardtuneError("--long-text: supported with --engine local only")
    if compiled and engine == "ray":
        raise GuardtuneError("--compile: supported with --engine local only")
    if int8_recheck is not None and engine == "ray":
        raise GuardtuneError("--int8-recheck: supported with --engine local only")
    if (device != "auto" or device_map is not None) and engine != "local":
        flag = "--device" if device != "auto" else "--device-map"
        raise GuardtuneError(
            f"{flag}: supported with --engine local only (ray places actors by --gpus-per-actor)"
        )
    if engine == "ray":
        from guardtune.engines.ray_predict import RaySettings, predict_with_ray

        settings = RaySettings(
            actors=actors,
            batch_size=batch_size,
            max_batch_tokens=budget,
            address=address,
            num_cpus=num_cpus,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
        )
        counts = predict_with_ray(
            model,
            data,
            out_file,
            output_format=output_format,  # type: ignore[arg-type]  # checked by predict_with_ray
            settings=settings,
            dtype=dtype,
        )
    elif engine == "local":
        classifier = _load(model, dtype, device, device_map, max_memory, compiled, int8_recheck)
        classifier.long_text = reading
        counts = predict_file(classifier, data, out_file, batch_size=batch_size, max_batch_tokens=budget)
        _say_rechecked(classifier, int8_recheck)
    else:
        raise GuardtuneError(f"--engine: expected local or ray, found {engine!r}")
    shown = {label or "(none)": n for label, n in counts.items()}
    out.print(f"Wrote {sum(counts.values())} predictions to {out_file}: {shown}")
