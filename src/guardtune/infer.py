"""Batched inference: sort by length, pad each batch to its own longest row, restore input order."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from guardtune.batches import DEFAULT_MAX_BATCH_TOKENS, check_batch_limits, length_batches
from guardtune.long_text import text_windows
from guardtune.methods.base import LoraMethod
from guardtune.methods.decoder import pad_batch
from guardtune.precision import float_projections
from guardtune.recheck import Recheck

# predict_scores with the method, the batch limits and head-tail reading bound: texts, then
# ``desc`` and ``reuse_prefix`` by keyword.
ScoreWhole = Callable[..., np.ndarray]


def _fits_window(method: LoraMethod, encoded: list[list[int]]) -> bool:
    # Rows padded after a cached prefix carry their padding mid-sequence; a sliding-window layer
    # counts those pads as distance, so reuse only when every prompt fits inside the window.
    # (A model config attribute, not a method's: configs without sliding windows lack it.)
    window = getattr(method.backbone.model.config.get_text_config(), "sliding_window", None)
    longest = max(len(ids) for ids in encoded) + method.longest_answer
    return window is None or longest < window


def reused_prefix(method: LoraMethod, encoded: list[list[int]]) -> int:
    """How many leading ids of every row the method's prefix cache stands for (0: none).

    The rows are whole rendered prompts, tokenized as one string: a message may merge into the
    prompt's last tokens in a way the probes behind ``shared_prefix`` did not foresee, and then
    the cache is not used for that call rather than used on ids it was not made from.
    """
    shared = method.shared_prefix
    if not shared or not _fits_window(method, encoded):
        return 0
    length = len(shared)
    return length if all(row[:length] == shared for row in encoded) else 0


def predict_scores(
    method: LoraMethod,
    texts: list[str],
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "Scoring",
    reuse_prefix: bool = True,
    long_text: str | None = None,
    recheck: Recheck | None = None,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
) -> np.ndarray:
    """Per-label probabilities for ``texts`` as a ``(len(texts), n_labels)`` float array.

    Rows are scored in length order so each batch carries little padding; the result is returned
    in input order. A batch holds at most ``batch_size`` texts and ``max_batch_tokens`` padded
    tokens (0 or ``None``: no token limit). For methods whose prompts share a prefix (the instruction),
    the prefix's key/value cache is computed once and each batch runs only its messages' own
    tokens, which are the ones counted.

    Args:
        long_text: ``head-tail`` or ``windows`` (see :mod:`guardtune.long_text`); default: the
            task's setting.
        recheck: on an int8 model that kept its float weights, picks from all the scores the texts
            to score again in float (:mod:`guardtune.recheck`); they are scored together, after
            the others, and their float scores replace the int8 ones.
    """
    n_labels = len(method.task.labels)
    max_batch_tokens = check_batch_limits(batch_size, max_batch_tokens)
    if not texts:
        return np.zeros((0, n_labels), dtype=np.float32)
    # Texts (or windows, already cut to the budget) scored whole, in passes of these limits.
    whole: ScoreWhole = functools.partial(
        predict_scores,
        method,
        batch_size=batch_size,
        progress=progress,
        long_text="head-tail",
        max_batch_tokens=max_batch_tokens,
    )
    if recheck is not None:
        with recheck.lock:
            return _scores_rechecked(method, texts, long_text, recheck, whole, desc, reuse_prefix)
    if (long_text or method.task.long_text) == "windows":
        return _most_flagged_window(method, texts, whole, desc, reuse_prefix)
    encoded = method.encode(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    scores = np.zeros((len(texts), n_labels), dtype=np.float32)
    device = method.backbone.device
    # Switching modes walks every submodule (~1,600 on Gemma 3): 10+ ms a call, so only when needed.
    was_training = method.training
    if was_training:
        method.eval()
    prefix_length = reused_prefix(method, encoded) if reuse_prefix else 0
    try:
        prefix = method.prefix_state() if prefix_length else None
        with (
            torch.inference_mode(),
            tqdm(total=len(texts), desc=desc, unit="msg", disable=not progress, leave=False) as bar,
        ):
            lengths = [len(encoded[i]) - prefix_length for i in order]
            for rows_slice in length_batches(lengths, batch_size, max_batch_tokens):
                chunk = order[rows_slice]
                rows = [encoded[i][prefix_length:] for i in chunk]
                batch = pad_batch(method.backbone.tokenizer, rows, device)
                out = method.scores(batch["input_ids"], batch["attention_mask"], prefix=prefix)
                scores[chunk] = out.float().cpu().numpy()
                bar.update(len(chunk))
    finally:
        if was_training:
            method.train()
    return scores


def _scores_rechecked(
    method: LoraMethod,
    texts: list[str],
    long_text: str | None,
    recheck: Recheck,
    whole: ScoreWhole,
    desc: str,
    reuse_prefix: bool,
) -> np.ndarray:
    """:func:`predict_scores` in int8, then again in float for the texts ``recheck`` picks.

    A text read in windows is re-scored whole (every window) when its decision is unstable, or
    when another of its windows is flagged within twice the margin below the one that decides it:
    int8 could have swapped which window decides.
    """
    windowed = (long_text or method.task.long_text) == "windows"
    owner = np.arange(len(texts))
    pieces = texts
    if windowed:
        pieces, owners = _windows(method, texts)
        owner = np.array(owners)
    scores = whole(pieces, desc=desc, reuse_prefix=reuse_prefix)
    best = _most_flagged(method, scores, owner, len(texts))
    unstable = recheck.unstable(scores[best])
    if windowed:
        flagged = method.task.flag_scores(scores)
        top = flagged[best][owner]
        # Windows flagged exactly alike (the same words twice) score alike in float too.
        close = (flagged >= top - 2 * recheck.margin) & (flagged < top)
        unstable |= np.bincount(owner, weights=close, minlength=len(texts)) > 0
    again = np.flatnonzero(unstable[owner])
    if len(again):
        # Whole prompts, no prefix cache: the cached one was computed by the int8 projections.
        with float_projections(method.backbone.model):
            scores[again] = whole([pieces[i] for i in again], desc=f"{desc} in float", reuse_prefix=False)
        best = _most_flagged(method, scores, owner, len(texts))
    recheck.rescored += int(unstable.sum())
    return scores[best]


def _windows(method: LoraMethod, texts: list[str]) -> tuple[list[str], list[int]]:
    """Every text's windows (see :func:`guardtune.long_text.text_windows`) and the text each is of."""
    budget = method.message_budget()
    owners: list[int] = []
    windows: list[str] = []
    for index, text in enumerate(texts):
        pieces = text_windows(method.backbone.tokenizer, text, budget)
        windows += pieces
        owners += [index] * len(pieces)
    return windows, owners


def _most_flagged(method: LoraMethod, scores: np.ndarray, owner: np.ndarray, n_texts: int) -> np.ndarray:
    """Per text, the row of ``scores`` (one per window, ``owner`` naming its text) flagged most."""
    if len(owner) == n_texts:
        return owner
    flagged = method.task.flag_scores(scores)
    best = np.full(n_texts, -1)
    for row in range(len(owner)):
        current = best[owner[row]]
        if current < 0 or flagged[row] > flagged[current]:
            best[owner[row]] = row
    return best


def _most_flagged_window(
    method: LoraMethod, texts: list[str], whole: ScoreWhole, desc: str, reuse_prefix: bool
) -> np.ndarray:
    """Score every window of every text; each text gets the scores of its most flagged window."""
    windows, owners = _windows(method, texts)
    scores = whole(windows, desc=desc, reuse_prefix=reuse_prefix)
    return scores[_most_flagged(method, scores, np.array(owners), len(texts))]
