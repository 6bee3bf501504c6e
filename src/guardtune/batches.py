"""How texts sorted by length are grouped into forward passes: by count and by padded tokens.

Kept free of torch so that the command line can read the default without importing it.
"""

from __future__ import annotations

from collections.abc import Iterator

from guardtune.errors import GuardtuneError

# Most padded tokens in one forward pass (rows x the longest row). A pass's activations grow with
# it: 32 rows of 256 tokens are 8,192 tokens, whose MLP outputs are 134 MB each on Gemma 3 270M,
# allocated and freed in every layer. At 1,024 short messages still go 32 to a pass and long ones
# fewer at a time; it was the fastest of 512 to 4,096 on long texts (docs/speed.md).
DEFAULT_MAX_BATCH_TOKENS = 1024


def length_batches(lengths: list[int], batch_size: int, max_tokens: int | None) -> Iterator[slice]:
    """Consecutive slices of rows whose ``lengths`` ascend: at most ``batch_size`` rows each, and
    at most ``max_tokens`` once padded to the slice's longest row (a row longer than that alone).

    Raises:
        GuardtuneError: ``batch_size`` or ``max_tokens`` below 1.
    """
    if batch_size < 1:
        raise GuardtuneError(f"batch size: expected a positive integer, found {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise GuardtuneError(f"max batch tokens: expected a positive integer or none, found {max_tokens}")
    start = 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and end - start < batch_size:
            if max_tokens is not None and (end - start + 1) * lengths[end] > max_tokens:
                break
            end += 1
        yield slice(start, end)
        start = end
