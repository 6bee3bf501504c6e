"""Batch inference on Ray Data: ``guardtune predict --engine ray``.

Ray reads the input files, a pool of actors (each holding one loaded :class:`~guardtune.api.Classifier`)
scores batches, and Ray writes Parquet or CSV part files into one output directory. Every output row
has the columns ``guardtune predict`` writes for it, because the actors call the same functions.
Input and output paths must be visible to every Ray node (a shared file system on a cluster).
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from guardtune.atomic import atomic_dir
from guardtune.batches import DEFAULT_MAX_BATCH_TOKENS, token_budget_problem
from guardtune.data.readers import SUPPORTED_SUFFIXES, examples_from_frame
from guardtune.data.writers import predictions_frame
from guardtune.errors import GuardtuneError
from guardtune.modeldir import read_manifest

OutputFormat = Literal["parquet", "csv"]
INSTALL_HINT = "pip install 'guardtune[ray]'"


@dataclass
class RaySettings:
    """Where and how wide the Ray job runs."""

    actors: int = 2
    batch_size: int = 32  # rows per actor call, scored in forward passes of this many rows
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS  # and this many padded tokens (0 / None: any)
    address: str | None = None  # None: start a Ray instance on this machine
    num_cpus: int | None = None  # CPUs of the local instance (default: all of this machine's)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.actors < 1:
            problems.append(f"--actors: expected a positive integer, found {self.actors}")
        if self.batch_size < 1:
            problems.append(f"--batch-size: expected a positive integer, found {self.batch_size}")
        if (problem := token_budget_problem(self.max_batch_tokens)) is not None:
            problems.append(problem)
        self.max_batch_tokens = self.max_batch_tokens or None
        if self.num_cpus is not None and self.num_cpus < 1:
            problems.append(f"--num-cpus: expected a positive integer, found {self.num_cpus}")
        if self.cpus_per_actor <= 0:
            problems.append(f"--cpus-per-actor: expected a positive number, found {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            problems.append(f"--gpus-per-actor: expected zero or more, found {self.gpus_per_actor}")
        if problems:
            raise GuardtuneError("; ".join(problems))


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise GuardtuneError(f"--engine ray: Ray is not installed ({INSTALL_HINT})") from exc
    return ray


class _Scorer:
    """One Ray actor: loads the model once, then classifies the batches it is sent."""

    def __init__(
        self, model: str, dtype: str, batch_size: int, max_batch_tokens: int | None, source: str, threads: int
    ) -> None:
        import torch

        from guardtune.classifier import Classifier

        # Actors share the machine; each runs the threads its CPU share pays for.
        torch.set_num_threads(threads)
        self.classifier = Classifier.load(model, dtype=dtype)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.source = Path(source)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        task = self.classifier.task
        rows = examples_from_frame(batch.reset_index(drop=True), task, self.source, require_labels=False)
        scores = self.classifier.predict_proba(
            rows.texts, batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens
        )
        return predictions_frame(rows.frame, task, scores)


def _input_files(data: Path) -> tuple[str, list[Path]]:
    """The kind (csv, jsonl, parquet) and the files of a file or a directory of files."""
    if data.is_file():
        kind = SUPPORTED_SUFFIXES.get(data.suffix.lower())
        files = [data]
    elif data.is_dir():
        files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        kinds = {SUPPORTED_SUFFIXES[p.suffix.lower()] for p in files}
        if len(kinds) > 1:
            raise GuardtuneError(
                f"{data}: mixes file types {sorted(kinds)} (expected one kind per directory)"
            )
        kind = kinds.pop() if kinds else None
    else:
        raise GuardtuneError(f"{data}: no such file or directory")
    if kind is None:
        raise GuardtuneError(
            f"{data}: no input files (expected {', '.join(sorted(SUPPORTED_SUFFIXES))} files)"
        )
    return kind, files


def _csv_header(path: Path) -> list[str]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return next(csv.reader(handle, delimiter=delimiter), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise GuardtuneError(f"{path}: cannot read the CSV header: {exc}") from exc


def _read(ray: Any, kind: str, files: list[Path]) -> Any:
    """A Ray dataset of the input rows, typed as ``guardtune predict`` reads them."""
    paths = [str(p) for p in files]
    # Reading is light next to scoring; asking no CPU for it keeps a full actor pool from starving it.
    if kind == "parquet":
        return ray.data.read_parquet(paths, num_cpus=0)
    if kind == "jsonl":
        options = {"lines": True} if "lines" in inspect.signature(ray.data.read_json).parameters else {}
        return ray.data.read_json(paths, num_cpus=0, **options)
    # `guardtune predict` keeps CSV cells as text ("007" stays "007", empty cells stay ""), so every
    # column is read as a string rather than left to type inference.
    columns = {name: pa.string() for path in files for name in _csv_header(path)}
    delimiter = "\t" if files[0].suffix.lower() == ".tsv" else ","
    return ray.data.read_csv(
        paths,
        num_cpus=0,
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=columns, strings_can_be_null=False),
    )


@contextlib.contextmanager
def _ray_session(ray: Any, settings: RaySettings) -> Iterator[None]:
    """Join ``settings.address``, or start a local instance; shut down only what was started here."""
    if ray.is_initialized():
        yield
        return
    # No usage reports, dashboard or log streaming: the job needs nothing from the network.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if settings.address:
        ray.init(address=settings.address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=settings.num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
        )
    try:
        yield
    finally:
        ray.shutdown()


def _guardtune_message(exc: BaseException) -> str | None:
    """The one line of a GuardtuneError an actor raised, however Ray wrapped it on the way."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GuardtuneError) and current.args:
            # Ray appends retry advice on further lines; the user's problem is the first.
            return str(current.args[0]).splitlines()[0]
        nested = getattr(current, "cause", None)
        current = nested if isinstance(nested, BaseException) else current.__cause__
    return None


def _label_counts(directory: Path, output_format: OutputFormat) -> dict[str, int]:
    files = sorted(directory.glob(f"*.{output_format}"))
    if output_format == "parquet":
        labels = [pq.read_table(f, columns=["label"]).column("label") for f in files]
    else:
        include = pacsv.ConvertOptions(include_columns=["label"], column_types={"label": pa.string()})
        labels = [pacsv.read_csv(f, convert_options=include).column("label") for f in files]
    counts: dict[str, int] = {}
    for column in labels:
        for label in column.to_pylist():
            key = label or ""
            counts[key] = counts.get(key, 0) + 1
    return counts


def predict_with_ray(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    output_format: OutputFormat = "parquet",
    settings: RaySettings | None = None,
    dtype: str = "auto",
    progress: bool = True,
) -> dict[str, int]:
    """Classify a file, or a directory of files, on Ray Data into a directory of part files.

    Each output row holds the input columns plus ``label`` and one ``score_<label>`` column per
    label, as ``guardtune predict`` writes them; the part files' names sort in input order. ``out``
    appears only when every row is written.

    Args:
        model: a model directory written by ``guardtune train``.
        data: a CSV, TSV, JSONL or Parquet file, or a directory of files of one of those kinds.
        out: a new (or empty) directory for the part files.
        output_format: ``parquet`` or ``csv``.
        settings: actors, batch size, and the Ray instance to use.
        dtype: ``auto``, ``bf16``, ``fp32`` or ``int8`` for the base model in each actor.
        progress: show Ray Data's progress bars.

    Returns:
        How many rows got each label.

    Raises:
        GuardtuneError: Ray not installed, a bad model, input or output path, or a bad row.

    Example:
        >>> predict_with_ray("runs/pii", "chats/", "predictions/", settings=RaySettings(actors=4))
        {'none': 9120, 'asking': 512, 'giving': 368}
    """
    settings = settings or RaySettings()
    if output_format not in ("parquet", "csv"):
        raise GuardtuneError(f"--format: expected parquet or csv, found {output_format!r}")
    model, data, out = Path(model).resolve(), Path(data).resolve(), Path(out).resolve()
    read_manifest(model)  # a bad model directory fails here, before any actor starts
    kind, files = _input_files(data)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GuardtuneError(f"--out {out}: already exists (expected a new or empty directory)")
    if out == data or data in out.parents:
        raise GuardtuneError(f"--out {out}: inside --data {data} (choose a directory outside it)")
    ray = _import_ray()
    with _ray_session(ray, settings):
        _check_room(ray, settings)
        context = ray.data.DataContext.get_current()
        saved = (context.execution_options.preserve_order, context.enable_progress_bars)
        saved_raise = getattr(context, "raise_original_map_exception", None)
        # Blocks leave the actor pool in input order, so part files follow the input.
        context.execution_options.preserve_order = True
        context.enable_progress_bars = progress
        if saved_raise is not None:
            # Ray >= 2.4x: an actor's GuardtuneError reaches the driver as itself, not as text
            # inside a UserCodeException, so the user gets its one line.
            context.raise_original_map_exception = True
        previous_level = logging.getLogger("ray.data").level
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            scored = _read(ray, kind, files).map_batches(
                _Scorer,
                fn_constructor_kwargs={
                    "model": str(model),
                    "dtype": dtype,
                    "batch_size": settings.batch_size,
                    "max_batch_tokens": settings.max_batch_tokens,
                    "source": str(data),
                    "threads": max(1, int(settings.cpus_per_actor)),
                },
                batch_size=settings.batch_size,
                batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=settings.actors),
                num_cpus=settings.cpus_per_actor,
                num_gpus=settings.gpus_per_actor,
            )
            with atomic_dir(out, overwrite=True) as tmp:
                write = scored.write_parquet if output_format == "parquet" else scored.write_csv
                write(str(tmp), ray_remote_args={"num_cpus": 0})
                counts = _label_counts(tmp, output_format)
        except Exception as exc:
            message = _guardtune_message(exc)
            if message is None:
                raise
            raise GuardtuneError(f"{message} (with --engine ray, rows count from a batch's start)") from exc
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved
            if saved_raise is not None:
                context.raise_original_map_exception = saved_raise
            logging.getLogger("ray.data").setLevel(previous_level)
    return counts


def _check_room(ray: Any, settings: RaySettings) -> None:
    """Fail at once, rather than wait forever, when the actor pool cannot fit on the cluster."""
    total = ray.cluster_resources()
    for resource, each in (("CPU", settings.cpus_per_actor), ("GPU", settings.gpus_per_actor)):
        needed = each * settings.actors
        if needed > total.get(resource, 0.0) + 1e-9:
            raise GuardtuneError(
                f"--actors {settings.actors}: needs {needed:g} {resource}s, the Ray cluster has "
                f"{total.get(resource, 0.0):g} (lower --actors or the per-actor share, or add resources)"
            )
