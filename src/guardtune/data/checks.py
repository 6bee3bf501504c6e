"""Sanity checks on training labels: a class the model never sees cannot be learned.

Fourteen rows all labelled ``none`` train to loss 0 and ship a normal-looking model that can only
ever answer ``none``; a label with a handful of rows learns little. One is an error, the other a
warning, both naming the file and the labels.
"""

from __future__ import annotations

from guardtune.data.readers import label_counts
from guardtune.errors import GuardtuneError
from guardtune.task import TaskSpec

MIN_ROWS_PER_LABEL = 10


def check_training_labels(
    task: TaskSpec, labels: list[str] | list[list[str]], source: str, allow_missing: bool = False
) -> list[str]:
    """Check the label balance of training rows; returns the warnings.

    Single-label: a label with no row is an error (unless ``allow_missing``; then a warning);
    a label with fewer than 10 rows warns. Multi-label: a label with no positive row warns, as
    does one with fewer than 10.

    Raises:
        GuardtuneError: a single-label task whose rows miss labels, without ``allow_missing``.
    """
    counts = {name: n for name, n in label_counts(task, labels).items() if name in task.labels}
    absent = [name for name, n in counts.items() if n == 0]
    few = {name: n for name, n in counts.items() if 0 < n < MIN_ROWS_PER_LABEL}
    warnings = []
    names = ", ".join(map(repr, absent))
    if absent and task.mode == "single":
        problem = f"{source}: no training rows for label(s) {names} of task {task.name}"
        if not allow_missing:
            raise GuardtuneError(
                f"{problem} (the model could never predict them; add rows, or pass "
                "--allow-missing-labels to train anyway)"
            )
        warnings.append(f"{problem}; the model will not learn to predict them")
    elif absent:
        warnings.append(
            f"{source}: no positive rows for label(s) {names} of task {task.name}; "
            "the model will not learn to flag them"
        )
    if few:
        shown = ", ".join(f"{name!r} {n}" for name, n in few.items())
        warnings.append(
            f"{source}: fewer than {MIN_ROWS_PER_LABEL} training rows for label(s) {shown}; "
            "expect weak scores on them"
        )
    return warnings
