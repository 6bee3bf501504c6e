"""Reading texts longer than a model's max length: keep head and tail, or score windows.

``head-tail`` (the default) keeps the beginning and the end of the token sequence: requests
wrapped in long role-play or a pasted document usually state themselves at one of the two ends,
and it costs one forward pass per text. ``windows`` splits the text into overlapping windows,
scores each, and keeps the scores of the most flagged window (the "most unsafe window"): slower
in proportion to the length, but nothing in the middle goes unread.
"""

from __future__ import annotations

from typing import Any

# Room for special tokens the tokenizer adds, and for a window's text re-tokenizing a little
# differently from the slice it was cut from.
_WINDOW_SLACK = 4


def head_and_tail(ids: list[int], budget: int) -> list[int]:
    """``ids`` unchanged when it fits ``budget``, else its first half and last half of the budget."""
    if len(ids) <= budget:
        return ids
    head = (budget + 1) // 2
    tail = budget - head
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


def text_windows(tokenizer: Any, text: str, budget: int, overlap: float = 0.25) -> list[str]:
    """``text`` cut into windows of at most ``budget`` tokens, overlapping by ``overlap``.

    Windows are cut at token boundaries and returned as text, so each method encodes them as
    it encodes any message. A text that fits is returned whole.
    """
    size = max(budget - _WINDOW_SLACK, 1)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if len(offsets) <= size:
        return [text]
    step = max(1, int(size * (1 - overlap)))
    windows = []
    for start in range(0, len(offsets), step):
        end = min(start + size, len(offsets))
        windows.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            break
    return windows
