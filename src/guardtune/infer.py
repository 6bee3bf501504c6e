"""Batched inference: sort by length, pad each batch to its own longest row, restore input order."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from guardtune.methods.common import pad_batch


def predict_scores(
    method: Any,
    texts: list[str],
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "Scoring",
) -> np.ndarray:
    """Per-label probabilities for ``texts`` as a ``(len(texts), n_labels)`` float array.

    Rows are scored in length order so each batch carries little padding; the result is returned
    in input order.
    """
    n_labels = len(method.task.labels)
    if not texts:
        return np.zeros((0, n_labels), dtype=np.float32)
    encoded = method.encode(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    scores = np.zeros((len(texts), n_labels), dtype=np.float32)
    device = method.backbone.device
    was_training = method.training
    method.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(texts), desc=desc, unit="msg", disable=not progress, leave=False) as bar,
        ):
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = pad_batch(method.backbone.tokenizer, [encoded[i] for i in chunk], device)
                scores[chunk] = method.scores(**batch).float().cpu().numpy()
                bar.update(len(chunk))
    finally:
        method.train(was_training)
    return scores
