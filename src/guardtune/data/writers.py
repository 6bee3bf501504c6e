"""Write frames as CSV, JSONL or Parquet (chosen by suffix), atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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


def predictions_frame(inputs: pd.DataFrame, task: TaskSpec, scores: np.ndarray) -> pd.DataFrame:
    """Input columns + ``label`` (comma-separated for multi-label) + one ``score_<label>`` each."""
    decided = task.decide(scores)
    # A gold "label" column in the input is kept, renamed, so predictions never overwrite it.
    frame = inputs.rename(columns={"label": "label_input"})
    frame["label"] = [",".join(x) if isinstance(x, list) else x for x in decided]
    for column, name in enumerate(task.label_names):
        frame[f"score_{name}"] = np.round(scores[:, column].astype(np.float64), 6)
    return frame
