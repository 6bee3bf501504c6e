"""Batched inference: sort by length, pad each batch to its own longest row, restore input order."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from guardtune.long_text import text_windows
from guardtune.methods.base import LoraMethod
from guardtune.methods.decoder import PrefixState, pad_batch
from guardtune.precision import float_projections

# Given a call's scores, which rows to score again with the float weights (``--int8-recheck``).
Recheck = Callable[[np.ndarray], np.ndarray]


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
) -> np.ndarray:
    """Per-label probabilities for ``texts`` as a ``(len(texts), n_labels)`` float array.

    Rows are scored in length order so each batch carries little padding; the result is returned
    in input order. For methods whose prompts share a prefix (the instruction), the prefix's
    key/value cache is computed once and each batch runs only its messages' own tokens.

    Args:
        long_text: ``head-tail`` or ``windows`` (see :mod:`guardtune.long_text`); default: the
            task's setting.
        recheck: on an int8 model that kept its float weights, picks from all the scores the rows
            to score again in float (:mod:`guardtune.recheck`); they are scored together, after
            the others, and their float scores replace the int8 ones.
    """
    n_labels = len(method.task.labels)
    if not texts:
        return np.zeros((0, n_labels), dtype=np.float32)
    if (long_text or method.task.long_text) == "windows":
        return _most_flagged_window(method, texts, batch_size, progress, desc, reuse_prefix, recheck)
    encoded = method.encode(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    scores = np.zeros((len(texts), n_labels), dtype=np.float32)
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
            _score_in_batches(method, encoded, order, scores, batch_size, prefix_length, prefix, bar)
            unstable = np.zeros(len(texts), dtype=bool) if recheck is None else recheck(scores)
            again = [i for i in order if unstable[i]]
            if again:
                # Whole prompts: the prefix cache was computed by the int8 projections.
                with float_projections(method.backbone.model):
                    _score_in_batches(method, encoded, again, scores, batch_size, 0, None, None)
    finally:
        if was_training:
            method.train()
    return scores


def _score_in_batches(
    method: LoraMethod,
    encoded: list[list[int]],
    order: list[int],
    scores: np.ndarray,
    batch_size: int,
    prefix_length: int,
    prefix: PrefixState | None,
    bar: tqdm | None,
) -> None:
    """Score the rows ``order`` names, ``batch_size`` at a time, into ``scores``."""
    device = method.backbone.device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = [encoded[i][prefix_length:] for i in chunk]
        batch = pad_batch(method.backbone.tokenizer, rows, device)
        out = method.scores(batch["input_ids"], batch["attention_mask"], prefix=prefix)
        scores[chunk] = out.float().cpu().numpy()
        if bar is not None:
            bar.update(len(chunk))


def _most_flagged_window(
    method: LoraMethod,
    texts: list[str],
    batch_size: int,
    progress: bool,
    desc: str,
    reuse_prefix: bool,
    recheck: Recheck | None,
) -> np.ndarray:
    """Score every window of every text; each text gets the scores of its most flagged window."""
    budget = method.message_budget()
    owners: list[int] = []
    windows: list[str] = []
    for index, text in enumerate(texts):
        pieces = text_windows(method.backbone.tokenizer, text, budget)
        windows += pieces
        owners += [index] * len(pieces)
    scores = predict_scores(method, windows, batch_size, progress, desc, reuse_prefix, "head-tail", recheck)
    if len(windows) == len(texts):
        return scores
    flagged = method.task.flag_scores(scores)
    owner = np.array(owners)
    best = np.full(len(texts), -1)
    for row in range(len(windows)):
        current = best[owner[row]]
        if current < 0 or flagged[row] > flagged[current]:
            best[owner[row]] = row
    return scores[best]
