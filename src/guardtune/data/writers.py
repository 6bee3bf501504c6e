"""Write frames as CSV, JSONL or Parquet (chosen by suffix), atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from guardtune.atomic import atomic_file
from guardtune.data.readers import SUPPORTED_SUFFIXES
from guardtune.errors import GuardtuneError
from guardtune.task import TaskSpec


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path``; the file appears only once it is complete."""
    path = Path(path)
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise GuardtuneError(
            f"{path}: unsupported output type {path.suffix!r} "
            f"(expected one of {', '.join(sorted(SUPPORTED_SUFFIXES))})"
        )
    with atomic_file(path) as tmp:
        if kind == "csv":
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            frame.to_csv(tmp, index=False, sep=sep)
        elif kind == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


class ChunkedTableWriter:
    """Append frames to one CSV, JSONL or Parquet file; it appears under its name only on success.

    Example:
        >>> with ChunkedTableWriter(Path("out.csv")) as writer:
        ...     for chunk in chunks:
        ...         writer.write(chunk)
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.kind = SUPPORTED_SUFFIXES.get(self.path.suffix.lower(), "")
        if not self.kind:
            raise GuardtuneError(
                f"{path}: unsupported output type {self.path.suffix!r} "
                f"(expected one of {', '.join(sorted(SUPPORTED_SUFFIXES))})"
            )
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._context = atomic_file(self.path)
        self._tmp = Path()

    def __enter__(self) -> ChunkedTableWriter:
        self._tmp = self._context.__enter__()
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "csv":
            sep = "\t" if self.path.suffix.lower() == ".tsv" else ","
            frame.to_csv(self._tmp, index=False, sep=sep, mode="a", header=self.rows == 0)
        elif self.kind == "jsonl":
            with self._tmp.open("a", encoding="utf-8") as handle:
                frame.to_json(handle, orient="records", lines=True, force_ascii=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self._tmp, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        self.rows += len(frame)

    def __exit__(self, *exc_info: Any) -> None:
        if self._parquet is not None:
            self._parquet.close()
        self._context.__exit__(*exc_info)


def predictions_frame(inputs: pd.DataFrame, task: TaskSpec, scores: np.ndarray) -> pd.DataFrame:
    """Input columns + ``label`` (comma-separated for multi-label; a guard's unflagged rows say
    ``safe``) + one ``score_<label>`` each."""
    decided = task.decide(scores)
    # A gold "label" column in the input is kept, renamed, so predictions never overwrite it.
    frame = inputs.rename(columns={"label": "label_input"})
    # A guard (a task with an overall label) names its negative outcome rather than leave it blank.
    empty = task.negative_label if task.overall is not None else ""
    frame["label"] = [(",".join(x) or empty) if isinstance(x, list) else x for x in decided]
    for column, name in enumerate(task.label_names):
        frame[f"score_{name}"] = np.round(scores[:, column].astype(np.float64), 6)
    return frame
