"""Files in, files out: ``label_file`` (a teacher's soft labels) and ``predict_file`` (any size,
a chunk at a time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from guardtune.batches import DEFAULT_MAX_BATCH_TOKENS
from guardtune.classifier import Classifier
from guardtune.data.readers import iter_examples, load_examples, soft_label_columns
from guardtune.data.writers import ChunkedTableWriter, predictions_frame, write_table


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
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
) -> dict[str, int]:
    """Classify a file of any size, a chunk at a time, into ``out``.

    ``out`` gets the input columns plus ``label`` and one ``score_<label>`` column per label; it
    appears only when every row is done. Memory stays flat: rows are read, scored and written
    ``chunk_rows`` at a time.

    Args:
        batch_size: most rows in one forward pass.
        max_batch_tokens: most padded tokens in one forward pass (0 or ``None``: no limit).

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
            scores = classifier.predict_proba(
                rows.texts, batch_size=batch_size, max_batch_tokens=max_batch_tokens
            )
            frame = predictions_frame(rows.frame, classifier.task, scores)
            writer.write(frame)
            for label in frame["label"]:
                counts[label] = counts.get(label, 0) + 1
            bar.update(len(frame))
    return counts
