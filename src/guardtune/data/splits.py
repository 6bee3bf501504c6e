"""Stratified train / validation / test splits of labelled rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split


def _strata(labels: Sequence[str] | Sequence[list[str]]) -> list[str]:
    # Multi-label rows are stratified on their label set, the closest single key sklearn accepts.
    return [",".join(x) if isinstance(x, list) else x for x in labels]


def _stratify_or_none(keys: list[str], n_holdout: int) -> list[str] | None:
    counts = Counter(keys)
    if min(counts.values()) < 2 or n_holdout < len(counts):
        return None
    return keys


def stratified_split(
    labels: Sequence[str] | Sequence[list[str]],
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices for train / validation / test, stratified by label where every class allows it.

    Args:
        labels: one gold label (or label list) per row.
        fractions: train, validation and test shares; they must sum to 1.
        seed: makes the split reproducible.

    Returns:
        Three sorted index arrays that partition ``range(len(labels))``.
    """
    if not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    indices = np.arange(len(labels))
    keys = _strata(labels)
    holdout = fractions[1] + fractions[2]
    if holdout == 0:
        return indices, indices[:0], indices[:0]
    n_holdout = max(1, round(holdout * len(indices)))
    train, rest = train_test_split(
        indices,
        test_size=n_holdout,
        random_state=seed,
        stratify=_stratify_or_none(keys, n_holdout),
    )
    if fractions[2] == 0:
        return np.sort(train), np.sort(rest), indices[:0]
    if fractions[1] == 0:
        return np.sort(train), indices[:0], np.sort(rest)
    rest_keys = [keys[i] for i in rest]
    n_test = max(1, round(len(rest) * fractions[2] / holdout))
    val, test = train_test_split(
        rest,
        test_size=n_test,
        random_state=seed,
        stratify=_stratify_or_none(rest_keys, min(n_test, len(rest) - n_test)),
    )
    return np.sort(train), np.sort(val), np.sort(test)
