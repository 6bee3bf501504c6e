"""Read labelled or unlabelled rows from CSV, JSONL or Parquet and check them against a task.

Every problem is reported in one line naming the file, the row as a spreadsheet shows it (CSV: the
header is row 1, so the first data row is row 2; JSONL: the line number; Parquet: 1-based row), and
what was expected.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from guardtune.errors import GuardtuneError
from guardtune.task import TaskSpec

SUPPORTED_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
SUPPORTED_SUFFIXES |= {".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Examples:
    """Texts (and gold labels when present) read from one file, in file order."""

    texts: list[str]
    labels: list[str] | list[list[str]] | None
    frame: pd.DataFrame
    source: str
    soft_labels: np.ndarray | None = None  # a teacher's (rows, labels) probabilities

    def __len__(self) -> int:
        return len(self.texts)


def _kind(path: Path) -> str:
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise GuardtuneError(
            f"{path}: unsupported file type {path.suffix!r} "
            f"(expected one of {', '.join(sorted(SUPPORTED_SUFFIXES))})"
        )
    return kind


def row_name(path: Path, index: int) -> str:
    """How a 0-based data row is named to a user, as their editor or spreadsheet shows it."""
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower(), "csv")
    if kind == "csv":
        return f"row {index + 2}"
    if kind == "jsonl":
        return f"line {index + 1}"
    return f"row {index + 1}"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file into a frame of strings (missing cells become '').

    Raises:
        GuardtuneError: missing, unreadable, not UTF-8, malformed, or empty.
    """
    chunks = [frame for _, frame in iter_tables(path, chunk_rows=None)]
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)


def iter_tables(path: str | Path, chunk_rows: int | None = 4096) -> Iterator[tuple[int, pd.DataFrame]]:
    """Yield ``(offset, frame)`` chunks of at most ``chunk_rows`` rows (``None``: the whole file).

    Memory stays bounded by the chunk size, whatever the size of the file.

    Raises:
        GuardtuneError: missing, unreadable, not UTF-8, malformed, or empty.
    """
    path = Path(path)
    kind = _kind(path)
    if not path.is_file():
        raise GuardtuneError(f"{path}: no such file")
    offset = 0
    with _translated_errors(path, kind):
        for frame in _raw_chunks(path, kind, chunk_rows):
            if frame.empty:
                continue
            yield offset, frame
            offset += len(frame)
    if offset == 0:
        raise GuardtuneError(f"{path}: no data rows (expected at least one)")


def _raw_chunks(path: Path, kind: str, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    if kind == "csv":
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        options: dict[str, Any] = {"dtype": str, "keep_default_na": False, "encoding": "utf-8", "sep": sep}
        if chunk_rows is None:
            yield pd.read_csv(path, **options)
        else:
            with pd.read_csv(path, chunksize=chunk_rows, **options) as reader:
                yield from reader
    elif kind == "jsonl":
        yield from _jsonl_chunks(path, chunk_rows)
    elif chunk_rows is None:
        yield pd.read_parquet(path)
    else:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()


@contextlib.contextmanager
def _translated_errors(path: Path, kind: str) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError as exc:
        raise GuardtuneError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); re-save the file as UTF-8"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise GuardtuneError(f"{path}: the file is empty (expected a header and rows)") from exc
    except pd.errors.ParserError as exc:
        reason = str(exc).strip().replace("\n", " ")
        raise GuardtuneError(f"{path}: malformed CSV: {reason}") from exc
    except OSError as exc:
        raise GuardtuneError(f"{path}: cannot read: {exc}") from exc
    except GuardtuneError:
        raise
    except Exception as exc:  # pyarrow raises its own types for corrupt files
        if kind != "parquet":
            raise
        raise GuardtuneError(f"{path}: not a readable Parquet file: {exc}") from exc


def _jsonl_chunks(path: Path, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GuardtuneError(f"{path}: line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise GuardtuneError(f"{path}: line {number}: expected a JSON object per line")
            if "\\ud" in line.lower():  # only an escape can smuggle in a lone surrogate
                _check_unicode(record, path, number)
            records.append(record)
            if chunk_rows is not None and len(records) >= chunk_rows:
                yield pd.DataFrame.from_records(records)
                records = []
    if records:
        yield pd.DataFrame.from_records(records)


def _check_unicode(record: dict[str, Any], path: Path, number: int) -> None:
    """Refuse a JSON escape of a lone surrogate (``"\\ud800"``): valid JSON, not valid Unicode."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GuardtuneError(
            f"{path}: line {number}: a lone surrogate escape ({exc.object[exc.start]!r}) is not valid "
            "Unicode text"
        ) from exc


def _missing_column(path: Path, column: str, frame: pd.DataFrame, role: str) -> GuardtuneError:
    found = [str(c) for c in frame.columns]
    close = difflib.get_close_matches(column, found, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return GuardtuneError(
        f"{path}: missing {role} column {column!r} (found columns: {', '.join(found)}){hint}"
    )


def _cell_text(value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return str(value)


def _check_text_cells(cells: pd.Series, column: str, path: Path, offset: int) -> None:
    # JSON lines can carry objects, lists or booleans where a message belongs; str() of those
    # would be classified as if it were text.
    for index, value in enumerate(cells):
        if isinstance(value, dict | list | bool | np.bool_):
            raise GuardtuneError(
                f"{path}: {row_name(path, offset + index)}: column {column!r} holds a "
                f"{type(value).__name__} (expected text)"
            )


def load_examples(path: str | Path, task: TaskSpec, require_labels: bool = True) -> Examples:
    """Read a file and check its texts (and labels) against ``task``.

    Args:
        path: CSV, TSV, JSONL or Parquet file.
        task: the task whose ``text_fields`` and ``label_column`` are read.
        require_labels: when False the label column may be absent (prediction input).

    Raises:
        GuardtuneError: naming the file, the row and what was expected.
    """
    path = Path(path)
    return examples_from_frame(read_table(path), task, path, require_labels)


def iter_examples(
    path: str | Path, task: TaskSpec, chunk_rows: int = 4096, require_labels: bool = False
) -> Iterator[Examples]:
    """Like :func:`load_examples`, one chunk of rows at a time (for files of any size)."""
    path = Path(path)
    for offset, frame in iter_tables(path, chunk_rows):
        yield examples_from_frame(frame, task, path, require_labels, offset)


def examples_from_frame(
    frame: pd.DataFrame, task: TaskSpec, path: Path, require_labels: bool = True, offset: int = 0
) -> Examples:
    """Check a frame's texts (and labels) against ``task``; ``offset`` numbers rows in errors."""
    for column in task.text_fields:
        if column not in frame.columns:
            raise _missing_column(path, column, frame, "text")
        _check_text_cells(frame[column], column, path, offset)
    texts = []
    fields = [frame[c].map(_cell_text).tolist() for c in task.text_fields]
    for index, parts in enumerate(zip(*fields, strict=True)):
        text = "\n".join(p for p in parts if p.strip())
        if not text.strip():
            raise GuardtuneError(
                f"{path}: {row_name(path, offset + index)}: empty text in {'+'.join(task.text_fields)} "
                "(expected a non-empty message)"
            )
        texts.append(text)
    labels: list[str] | list[list[str]] | None = None
    if task.label_column in frame.columns:
        raw = frame[task.label_column].map(_cell_text).tolist()
        labels = parse_labels(raw, task, path, offset)
        if task.overall is not None:
            categories = None
            if task.category_column in frame.columns:
                categories = frame[task.category_column].map(_cell_text).tolist()
            labels = with_overall(labels, categories, task, path, offset)  # type: ignore[arg-type]
    elif require_labels:
        raise _missing_column(path, task.label_column, frame, "label")
    soft = parse_soft_labels(frame, task, path, offset)
    return Examples(texts=texts, labels=labels, frame=frame, source=str(path), soft_labels=soft)


SOFT_JSON_COLUMN = "scores"
SUM_TOLERANCE = 0.01


def soft_label_columns(task: TaskSpec) -> list[str]:
    """Columns that carry a teacher's probability per label: ``p_<label>``."""
    return [f"p_{name}" for name in task.label_names]


def parse_soft_labels(frame: pd.DataFrame, task: TaskSpec, path: Path, offset: int = 0) -> np.ndarray | None:
    """A teacher's scores from ``p_<label>`` columns or a JSON ``scores`` column, checked.

    Probabilities must lie in [0, 1]; for single-label tasks each row must sum to 1 (within 0.01).
    """
    columns = soft_label_columns(task)
    present = [c for c in columns if c in frame.columns]
    if present and len(present) < len(columns):
        missing = [c for c in columns if c not in frame.columns]
        raise GuardtuneError(f"{path}: teacher scores need every p_<label> column; missing {missing}")
    if present:
        cells = frame[columns].to_numpy()
    elif SOFT_JSON_COLUMN in frame.columns:
        cells = np.array(
            [_json_scores(v, task, path, offset + i) for i, v in enumerate(frame[SOFT_JSON_COLUMN])]
        )
    else:
        return None
    scores = np.zeros(cells.shape, dtype=np.float64)
    for index, row in enumerate(cells):
        for column, value in enumerate(row):
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            if not 0.0 <= number <= 1.0:
                raise GuardtuneError(
                    f"{path}: {row_name(path, offset + index)}: p_{task.label_names[column]} is {value!r} "
                    "(expected a probability in [0, 1])"
                )
            scores[index, column] = number
        if task.mode == "single" and abs(scores[index].sum() - 1.0) > SUM_TOLERANCE:
            raise GuardtuneError(
                f"{path}: {row_name(path, offset + index)}: teacher scores sum to {scores[index].sum():.4f} "
                f"(expected 1 within {SUM_TOLERANCE} for a single-label task)"
            )
    return scores


def _json_scores(value: object, task: TaskSpec, path: Path, index: int) -> list[object]:
    try:
        parsed = json.loads(str(value))
    except json.JSONDecodeError as exc:
        raise GuardtuneError(
            f"{path}: {row_name(path, index)}: column {SOFT_JSON_COLUMN!r} is not JSON ({exc.msg})"
        ) from exc
    if not isinstance(parsed, dict) or set(parsed) != set(task.label_names):
        raise GuardtuneError(
            f"{path}: {row_name(path, index)}: column {SOFT_JSON_COLUMN!r} must map every label "
            f"({', '.join(task.label_names)}) to a probability"
        )
    return [parsed[name] for name in task.label_names]


def parse_labels(raw: list[str], task: TaskSpec, path: Path, offset: int = 0) -> list[str] | list[list[str]]:
    """Check gold label cells against the task; multi-label cells are comma-separated."""
    known = task.label_names
    if task.mode == "single":
        single: list[str] = []
        for index, value in enumerate(raw):
            value = value.strip()
            if value not in task.labels:
                shown = repr(value) if value else "an empty label"
                raise GuardtuneError(
                    f"{path}: {row_name(path, offset + index)}: unknown label {shown} in column "
                    f"{task.label_column!r} (expected one of: {', '.join(known)})"
                )
            single.append(value)
        return single
    order = {name: i for i, name in enumerate(known)}
    multi: list[list[str]] = []
    for index, value in enumerate(raw):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        parts = [p for p in parts if p != task.negative_label]
        unknown = [p for p in parts if p not in order]
        if unknown:
            raise GuardtuneError(
                f"{path}: {row_name(path, offset + index)}: unknown label {unknown[0]!r} in column "
                f"{task.label_column!r} (expected comma-separated labels from: {', '.join(known)}; "
                f"empty or {task.negative_label!r} for none)"
            )
        multi.append(sorted(set(parts), key=order.__getitem__))
    return multi


def with_overall(
    labels: list[list[str]], categories: list[str] | None, task: TaskSpec, path: Path, offset: int = 0
) -> list[list[str]]:
    """Gold label sets of an ``overall`` task: the overall label on for unsafe rows (named or
    implied by a category), plus categories from the category column, in task order."""
    assert task.overall is not None
    order = {name: i for i, name in enumerate(task.label_names)}
    merged: list[list[str]] = []
    for index, active in enumerate(labels):
        extra = [p.strip() for p in (categories[index] if categories else "").split(",") if p.strip()]
        unknown = [p for p in extra if p not in order or p == task.overall]
        if unknown:
            raise GuardtuneError(
                f"{path}: {row_name(path, offset + index)}: unknown category {unknown[0]!r} in column "
                f"{task.category_column!r} (expected comma-separated names from: "
                f"{', '.join(task.categories)})"
            )
        if extra and not active:
            raise GuardtuneError(
                f"{path}: {row_name(path, offset + index)}: categories {extra} on a "
                f"{task.negative_label!r} row (expected categories only on {task.overall!r} rows)"
            )
        names = set(active) | set(extra)
        if names:
            names.add(task.overall)
        merged.append(sorted(names, key=order.__getitem__))
    return merged


def label_counts(task: TaskSpec, labels: list[str] | list[list[str]]) -> dict[str, int]:
    """Rows per label, in task order; multi-label tasks also count rows with no label."""
    counts = {name: 0 for name in task.label_names}
    if task.mode == "multi":
        counts[task.negative_label] = 0
        for row in labels:
            assert isinstance(row, list)
            for name in row:
                counts[name] += 1
            if not row:
                counts[task.negative_label] += 1
        return counts
    for label in labels:
        assert isinstance(label, str)
        counts[label] += 1
    return counts
