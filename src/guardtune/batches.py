"""How texts sorted by length are grouped into forward passes: by count and by padded tokens.

Kept free of torch so that the command line can read the default without importing it.
"""

from __future__ import annotations

from collections.abc import Iterator

from guardtune.errors import GuardtuneError

# Most padded tokens in one forward pass (rows x the longest row). A pass's activations grow with
# it: 32 rows of 256 tokens are 8,192 tokens, whose MLP outputs on Gemma 3 270M (8,192 x 2,048 in
# fp32, 67 MB each) are allocated and freed in every layer. At 1,024 rows of up to 32 tokens still
# go 32 to a pass and longer ones fewer at a time; of 512 to 4,096 it was the fastest or within
# noise of it on long texts (docs/speed.md).
DEFAULT_MAX_BATCH_TOKENS = 1024


def token_budget(value: int | None) -> int | None:
    """A ``--max-batch-tokens`` / ``max_batch_tokens`` value as a budget: ``None`` for no limit
    (given as 0 or ``None``), else the positive number of tokens.

    Raises:
        GuardtuneError: a negative value.
    """
    problem = token_budget_problem(value)
    if problem is not None:
        raise GuardtuneError(problem)
    return value or None


def token_budget_problem(value: int | None) -> str | None:
    """What is wrong with a ``--max-batch-tokens`` value, in one line (``None``: nothing), for
    settings that report every bad option at once."""
    if value is not None and value < 0:
        return f"--max-batch-tokens: expected 0 (no limit) or a positive integer, found {value}"
    return None


def check_batch_limits(batch_size: int, max_tokens: int | None) -> int | None:
    """:func:`token_budget` of ``max_tokens``, once ``batch_size`` is checked too.

    Raises:
        GuardtuneError: ``batch_size`` below 1 or ``max_tokens`` below 0.
    """
    if batch_size < 1:
        raise GuardtuneError(f"--batch-size: expected a positive integer, found {batch_size}")
    return token_budget(max_tokens)


def length_batches(lengths: list[int], batch_size: int, max_tokens: int | None) -> Iterator[slice]:
    """Consecutive slices of rows (sorted by length, so that each pads little): at most
    ``batch_size`` rows each, and at most ``max_tokens`` (:func:`token_budget`) once padded to the
    slice's longest row (a row longer than that alone).

    Raises:
        GuardtuneError: ``batch_size`` below 1 or ``max_tokens`` below 0.
    """
    max_tokens = check_batch_limits(batch_size, max_tokens)
    start = 0
    while start < len(lengths):
        end, longest = start + 1, lengths[start]
        while end < len(lengths) and end - start < batch_size:
            widest = max(longest, lengths[end])
            if max_tokens is not None and (end - start + 1) * widest > max_tokens:
                break
            end, longest = end + 1, widest
        yield slice(start, end)
        start = end
