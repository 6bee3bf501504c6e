"""Plain functions the methods share: running the adapted decoder, LM-head rows, losses."""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from guardtune.backbone import Backbone
from guardtune.methods.lora import activate


def pad_batch(tokenizer: Any, rows: list[list[int]], device: torch.device) -> dict[str, torch.Tensor]:
    """Pad token-id rows into ``input_ids`` + ``attention_mask`` tensors on ``device``."""
    padded = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    return {k: v.to(device) for k, v in padded.items() if k in ("input_ids", "attention_mask")}


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left and right padding give the same states."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


@functools.cache
def _cache_argument(decoder_type: type[nn.Module]) -> str:
    # transformers 5.2x renamed the decoder's ``past_key_values`` (argument and output) to
    # ``cache``, warning on the old name until its removal in 5.40; 4.x knows only the old one.
    parameters = inspect.signature(decoder_type.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The key/value cache a decoder call returned, under either transformers name."""
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


def decoder_states(
    method: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: Any = None,
    **kwargs: Any,
) -> Any:
    """Run the decoder (with the method's adapter active) and return its output object.

    The decoder is called directly, so the full-vocabulary LM head is never computed.
    ``cache`` continues an earlier call's key/value cache (see :func:`output_cache`).
    """
    peft_model = method.backbone.peft_model
    activate(peft_model, method.adapter_name, training=method.training)
    base_model: Any = peft_model.get_base_model()
    decoder = base_model.get_decoder()
    if cache is not None:
        kwargs[_cache_argument(decoder.__class__)] = cache
    return decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=kwargs.pop("position_ids", position_ids(attention_mask)),
        **kwargs,
    )


@dataclass
class PrefixState:
    """The key/value cache of the prompt prefix every message shares, computed once per model."""

    cache: Any
    length: int

    def for_batch(self, rows: int) -> Any:
        # The decoder extends a cache in place, so each batch gets its own copy.
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


def compute_prefix(method: Any, prefix_ids: list[int]) -> PrefixState:
    """Run the shared prompt prefix once and keep its cache."""
    ids = torch.tensor([prefix_ids], device=method.backbone.device)
    with torch.inference_mode():
        out = decoder_states(method, ids, torch.ones_like(ids), use_cache=True)
    return PrefixState(output_cache(out), len(prefix_ids))


def cached_prefix(method: Any) -> PrefixState:
    """The method's prefix state, computed on first use after training changed the weights."""
    if method._prefix is None:
        method._prefix = compute_prefix(method, method.shared_prefix)
    return method._prefix


def decoder_states_after(
    method: Any,
    prefix: PrefixState | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    **kwargs: Any,
) -> Any:
    """Decoder states for ``input_ids`` that continue ``prefix`` (or stand alone without one).

    ``attention_mask`` covers ``input_ids`` only; positions continue after the prefix.
    """
    if prefix is None:
        return decoder_states(method, input_ids, attention_mask, **kwargs)
    rows = input_ids.shape[0]
    full_mask = torch.cat([attention_mask.new_ones((rows, prefix.length)), attention_mask], dim=1)
    kwargs["use_cache"] = True
    return decoder_states(
        method,
        input_ids,
        full_mask,
        cache=prefix.for_batch(rows),
        position_ids=prefix.length + position_ids(attention_mask),
        **kwargs,
    )


def lm_head_rows(backbone: Backbone, hidden: torch.Tensor, token_ids: torch.Tensor | None) -> torch.Tensor:
    """The causal LM's logits for ``token_ids`` only: exactly those entries of the full head.

    ``None`` means every row (the full vocabulary). Applies the model's final logit soft-capping
    when its config has one (Gemma 2 does).
    """
    head: Any = backbone.model.get_output_embeddings()
    weight = head.weight if token_ids is None else head.weight[token_ids]
    logits = hidden.to(weight.dtype) @ weight.T
    if getattr(head, "bias", None) is not None:
        logits = logits + (head.bias if token_ids is None else head.bias[token_ids])
    logits = logits.float()
    cap = getattr(backbone.model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def last_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each row's last real token, for left or right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def label_features(
    task: Any, token_ids: list[list[int]], labels: list[Any], soft_labels: Any = None
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


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters training changes (adapter and head), for light checkpoints."""
    return {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}


def single_label_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    soft_labels: torch.Tensor | None = None,
    distill: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Cross-entropy on the gold label, mixed with KL to a teacher's soft labels when distilling.

    ``distill = (alpha, temperature)``: ``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)``,
    where ``teacher_T`` is the teacher's distribution re-tempered as ``softmax(log p / T)``.
    """
    hard = nn.functional.cross_entropy(logits, labels.long())
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
) -> torch.Tensor:
    """Weighted BCE on the gold labels, mixed with BCE to a teacher's tempered scores.

    ``label_mask`` (rows, labels) leaves unknown gold values (0.0) out of both terms.
    """
    mask = torch.ones_like(logits) if label_mask is None else label_mask.to(logits.dtype)
    known = mask.sum().clamp_min(1.0)
    hard = nn.functional.binary_cross_entropy_with_logits(
        logits, labels.float(), pos_weight=pos_weight, reduction="none"
    )
    hard = (hard * mask).sum() / known
    if soft_labels is None or distill is None:
        return hard
    alpha, temperature = distill
    teacher_logits = torch.logit(soft_labels.float().clamp(1e-6, 1 - 1e-6))
    target = torch.sigmoid(teacher_logits / temperature)
    soft = nn.functional.binary_cross_entropy_with_logits(logits / temperature, target, reduction="none")
    soft = (soft * mask).sum() / known
    return (1 - alpha) * hard + alpha * temperature**2 * soft
