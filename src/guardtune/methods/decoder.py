"""Running the adapted decoder: padding, positions, the shared prefix's cache, LM-head rows.

The decoder is called directly (never the causal LM's ``forward``), so the full-vocabulary LM
head is computed only where a method asks for it (:func:`lm_head_rows`).
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from guardtune.backbone import Backbone
from guardtune.methods.lora import activate

if TYPE_CHECKING:
    from guardtune.methods.base import LoraMethod


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
    method: LoraMethod,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: Any = None,
    **kwargs: Any,
) -> Any:
    """Run the decoder (with the method's adapter active) and return its output object.

    ``cache`` continues an earlier call's key/value cache (see :func:`output_cache`); the output
    carries a cache only with ``use_cache=True``.
    """
    peft_model = method.backbone.peft_model
    activate(peft_model, method.adapter_name, training=method.training)
    base_model: Any = peft_model.get_base_model()
    decoder = base_model.get_decoder()
    if cache is not None:
        kwargs[_cache_argument(decoder.__class__)] = cache
    # A key/value cache only when asked for: by default the decoder would build one on every call
    # (Gemma 3's sliding-window layers slice it by the message's length, which also made a
    # compiled decoder recompile for short batches).
    kwargs.setdefault("use_cache", False)
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


class PrefixCache:
    """A method's :class:`PrefixState`, computed on first use and dropped when the weights change.

    Training, and saving (see :meth:`LoraMethod.save`), call :meth:`clear`; the next use refills
    it with one pass over the prefix.
    """

    def __init__(self) -> None:
        self._state: PrefixState | None = None

    def get(self, method: LoraMethod) -> PrefixState:
        if self._state is None:
            self._state = compute_prefix(method, method.shared_prefix)
        return self._state

    def clear(self) -> None:
        self._state = None


def compute_prefix(method: LoraMethod, prefix_ids: list[int]) -> PrefixState:
    """Run the shared prompt prefix once and keep its cache."""
    ids = torch.tensor([prefix_ids], device=method.backbone.device)
    with torch.inference_mode():
        out = decoder_states(method, ids, torch.ones_like(ids), use_cache=True)
    return PrefixState(output_cache(out), len(prefix_ids))


def decoder_states_after(
    method: LoraMethod,
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
    # Under --device-map the LM head (tied to the input embedding) and the last layer can sit on
    # different GPUs; the hidden states go to the head, which is only a few rows here.
    if token_ids is not None:
        token_ids = token_ids.to(head.weight.device)
    weight = head.weight if token_ids is None else head.weight[token_ids]
    if token_ids is not None:
        # A few rows: in the hidden states' precision (a bf16 head under fp32 int8, precision.py).
        weight = weight.to(dtype=hidden.dtype)
    logits = hidden.to(weight.device, weight.dtype) @ weight.T
    if getattr(head, "bias", None) is not None:
        logits = logits + (head.bias if token_ids is None else head.bias[token_ids])
    logits = logits.float()
    cap = getattr(backbone.model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def last_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each row's last real token, for left or right padding alike."""
    attention_mask = attention_mask.to(hidden.device)  # --device-map: the last layer's device
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
