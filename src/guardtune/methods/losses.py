"""Training rows and losses the methods share: label features, cross-entropy, weighted BCE, distillation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from guardtune.task import TaskSpec


def label_features(
    task: TaskSpec, token_ids: list[list[int]], labels: list[Any], soft_labels: Any = None
) -> list[dict[str, Any]]:
    """Training rows for methods that score every label: ids, the gold label as a class index
    (single-label) or a multi-hot row (multi-label), and the teacher's scores when distilling."""
    index = {name: i for i, name in enumerate(task.label_names)}
    # Only guard tasks (``overall``) have gold values that may be unknown.
    masks = task.known_mask(labels) if task.mode == "multi" and task.overall else None
    rows = []
    for i, (ids, label) in enumerate(zip(token_ids, labels, strict=True)):
        if task.mode == "single":
            target: Any = index[label]
        else:
            target = [0.0] * len(index)
            for name in label:
                target[index[name]] = 1.0
        row: dict[str, Any] = {"input_ids": ids, "labels": target}
        if masks is not None:
            row["label_mask"] = masks[i].tolist()
        if soft_labels is not None:
            row["soft_labels"] = [float(x) for x in soft_labels[i]]
        rows.append(row)
    return rows


def single_label_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    soft_labels: torch.Tensor | None = None,
    distill: tuple[float, float] | None = None,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy on the gold label, mixed with KL to a teacher's soft labels when distilling.

    ``distill = (alpha, temperature)``: ``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)``,
    where ``teacher_T`` is the teacher's distribution re-tempered as ``softmax(log p / T)``.
    ``smoothing``: the gold target is ``1 - smoothing`` on the gold label and ``smoothing`` spread
    evenly over all labels (torch's ``label_smoothing``).
    """
    hard = nn.functional.cross_entropy(logits, labels.long(), label_smoothing=smoothing)
    if soft_labels is None or distill is None:
        return hard
    alpha, temperature = distill
    teacher = torch.log_softmax(torch.log(soft_labels.float().clamp_min(1e-8)) / temperature, dim=-1)
    student = torch.log_softmax(logits / temperature, dim=-1)
    kl = nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return (1 - alpha) * hard + alpha * temperature**2 * kl


def multi_label_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_weight: torch.Tensor,
    soft_labels: torch.Tensor | None = None,
    distill: tuple[float, float] | None = None,
    label_mask: torch.Tensor | None = None,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Weighted BCE on the gold labels, mixed with BCE to a teacher's tempered scores.

    ``label_mask`` (rows, labels) leaves unknown gold values (0.0) out of both terms.
    ``smoothing``: each gold value ``y`` becomes ``y * (1 - smoothing) + smoothing / 2``.
    ``pos_weight`` weighs the positive rows of each label as a whole (not the positive term of each
    row, as torch's ``pos_weight`` does): with smoothing a negative row has a small positive target,
    and weighing that term by up to 20 would move its best score from ``smoothing / 2`` towards 0.5.
    """
    mask = torch.ones_like(logits) if label_mask is None else label_mask.to(logits.dtype)
    known = mask.sum().clamp_min(1.0)
    positive = labels.float() > 0.5
    gold = labels.float() * (1 - smoothing) + smoothing / 2
    weight = torch.where(positive, pos_weight.to(logits.dtype), torch.ones_like(logits))
    hard = nn.functional.binary_cross_entropy_with_logits(logits, gold, weight=weight, reduction="none")
    hard = (hard * mask).sum() / known
    if soft_labels is None or distill is None:
        return hard
    alpha, temperature = distill
    teacher_logits = torch.logit(soft_labels.float().clamp(1e-6, 1 - 1e-6))
    target = torch.sigmoid(teacher_logits / temperature)
    soft = nn.functional.binary_cross_entropy_with_logits(logits / temperature, target, reduction="none")
    soft = (soft * mask).sum() / known
    return (1 - alpha) * hard + alpha * temperature**2 * soft
