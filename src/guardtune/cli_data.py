"""``guardtune data``: make, split and inspect labelled data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from guardtune.cli_options import LabelledDataOption, SeedOption, TaskOption, out
from guardtune.errors import GuardtuneError


def data_synth(
    task: Annotated[str, typer.Option(help="pii-intent or pii-categories.")],
    n: Annotated[int | None, typer.Option(help="Number of rows.")] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="CSV, JSONL or Parquet file to write.")
    ] = None,
    seed: SeedOption = 0,
    split: Annotated[
        str, typer.Option(help="train, or check: phrasings the train generator never uses.")
    ] = "train",
    family: Annotated[
        list[str] | None, typer.Option(help="Only this template family (repeat for several).")
    ] = None,
    list_families: Annotated[
        bool, typer.Option("--list-families", help="Print the task's families and their row shares.")
    ] = False,
    templates: Annotated[
        Path | None, typer.Option(help="Folder of <task>/<family>.yaml files to use instead of the built-in.")
    ] = None,
) -> None:
    """Generate a synthetic data set for a built-in PII task; a `family` column names each row's family."""
    from guardtune.data import synth
    from guardtune.data.writers import write_table

    if list_families:
        out.print(synth.describe_families(task, templates), highlight=False, markup=False)
        return
    if n is None or out_file is None:
        raise GuardtuneError("data synth: --n and --out are required (or pass --list-families)")
    if split not in synth.SPLITS:
        raise GuardtuneError(f"--split: expected train or check, found {split!r}")
    frame = synth.generate(task, n, seed, split=split, families=family, templates=templates)  # type: ignore[arg-type]
    write_table(frame, out_file)
    column = frame.columns[1]
    counts = frame[column].replace("", "(none)").value_counts().to_dict()
    per_family = frame["family"].value_counts().to_dict()
    out.print(f"Wrote {len(frame)} rows to {out_file}: {counts}; families {per_family}")


def data_split(
    task: TaskOption,
    data: LabelledDataOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for train / val / test files.")],
    val: Annotated[float, typer.Option(help="Validation share.")] = 0.1,
    test: Annotated[float, typer.Option(help="Test share.")] = 0.1,
    seed: SeedOption = 0,
) -> None:
    """Split a labelled file into stratified train / val / test files of the same format."""
    from guardtune.data.readers import label_counts, load_examples
    from guardtune.data.splits import stratified_split
    from guardtune.data.writers import write_table
    from guardtune.task import load_task

    spec = load_task(task)
    rows = load_examples(data, spec)
    assert rows.labels is not None
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise GuardtuneError(f"--val {val} --test {test}: expected shares in [0, 1) that sum below 1")
    parts = stratified_split(rows.labels, (1 - val - test, val, test), seed=seed)
    table = Table("split", "rows", *label_counts(spec, rows.labels))
    for name, indices in zip(("train", "val", "test"), parts, strict=True):
        if len(indices) == 0:
            continue
        write_table(rows.frame.iloc[indices], out_dir / f"{name}{data.suffix}")
        counts = label_counts(spec, [rows.labels[i] for i in indices])
        table.add_row(name, str(len(indices)), *map(str, counts.values()))
    out.print(table)
    out.print(f"Wrote the splits to {out_dir}")


def data_stats(
    task: TaskOption,
    data: LabelledDataOption,
) -> None:
    """Check a labelled file against a task and print rows per label."""
    from guardtune.data.readers import label_counts, load_examples
    from guardtune.task import load_task

    spec = load_task(task)
    rows = load_examples(data, spec)
    assert rows.labels is not None
    counts = label_counts(spec, rows.labels)
    table = Table("label", "rows", "share")
    for label, count in counts.items():
        table.add_row(label, str(count), f"{count / len(rows):.1%}")
    out.print(table)
    out.print(f"{len(rows)} rows in {data}, all valid for task {spec.name}", soft_wrap=True)
