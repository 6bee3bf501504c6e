"""``--int8-recheck``: score again in float the messages whose int8 decision sits near a boundary.

int8 projections move a message's scores a little (0.01 on average on the embedded Gemma 3 270M)
and a few by more (up to 0.1-0.3). A label changes only where the scores sit near the policy's
boundary: two labels nearly tied, or a score near its threshold. A message is *unstable* at
margin ``m`` when moving one of its scores by ``m``, or two of them by ``m`` in opposite
directions, changes what the task's policy decides. Those messages, and only those, are scored
again with the float weights the int8 projections kept (:func:`guardtune.precision.float_projections`),
so their labels are the float model's (up to float rounding: they are batched apart). A label whose
scores int8 moved by more than the margin is not caught. docs/int8.md has how the default margin
was chosen and what it costs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from guardtune.errors import GuardtuneError
from guardtune.task import TaskSpec

# Chosen on the quickstart model's training and validation messages (2,160): at 0.125 every label
# that int8 changed there, eager or compiled, was re-scored (docs/int8.md).
DEFAULT_RECHECK_MARGIN = 0.125


@dataclass
class Recheck:
    """What :func:`guardtune.infer.predict_scores` needs to re-score near ties in float.

    Attributes:
        margin: the score change a decision must survive (see :func:`unstable_rows`).
        unstable: which rows of a call's (raw) scores to score again, as the caller decides them
            (the classifier: calibrated scores against its calibrated policy).
        rescored: how many texts have been scored again so far (a windowed text counts once).
        lock: held for a whole call: the float pass switches the model's projections, so two
            calls must not interleave.
    """

    margin: float
    unstable: Callable[[np.ndarray], np.ndarray]
    rescored: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def check_margin(margin: float) -> float:
    """``margin`` if it is a score change between 0 and 1 (exclusive), else a one-line error."""
    if not 0.0 < margin < 1.0:
        raise GuardtuneError(f"--int8-recheck: expected a score margin between 0 and 1, found {margin!r}")
    return margin


def unstable_rows(task: TaskSpec, scores: np.ndarray, margin: float) -> np.ndarray:
    """Which rows of ``scores`` (rows x labels, as the policy reads them) change their decided
    label(s) when one score moves by ``margin``, or two move by it in opposite directions."""
    decided = task.decide(scores)
    rows, labels = scores.shape
    unstable = np.zeros(rows, dtype=bool)
    for shift in _shifts(labels, margin):
        moved = task.decide(np.clip(scores + shift, 0.0, 1.0))
        unstable |= np.fromiter((a != b for a, b in zip(moved, decided, strict=True)), bool, rows)
    return unstable


def _shifts(labels: int, margin: float) -> Iterator[np.ndarray]:
    steps = np.eye(labels) * margin
    for up in range(labels):
        yield steps[up]
        yield -steps[up]
        for down in range(labels):
            if down != up:
                yield steps[up] - steps[down]
