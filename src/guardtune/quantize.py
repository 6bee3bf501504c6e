"""``--quantize 4bit|8bit``: the frozen base held in bitsandbytes' k-bit layers, LoRA trained on top.

4-bit is QLoRA's recipe (NF4 weights, double quantisation of the scales, bf16 compute); 8-bit is
LLM.int8(). The LoRA adapter, the head and the LM head stay unquantised. bitsandbytes runs on
CUDA and, from release 0.46, on CPUs (its ``cpu`` backend), which is what the tests here use.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from guardtune.errors import GuardtuneError

QUANTIZE_MODES = ("4bit", "8bit")

# peft imports bitsandbytes whenever it is installed, and on CPUs with AVX-512 BF16 its CPU backend
# then warns on every run that it cannot fetch an optional kernel from the Hugging Face hub (the
# `kernels` package); its built-in kernels run instead. Only that module's warnings are hidden.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def check_quantize(mode: str | None) -> None:
    """Refuse an unknown ``--quantize`` value in one line."""
    if mode is not None and mode not in QUANTIZE_MODES:
        raise GuardtuneError(f"--quantize: expected 4bit or 8bit, found {mode!r}")


def quantization_config(mode: str) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``mode``.

    Raises:
        GuardtuneError: an unknown mode, or bitsandbytes is not installed.
    """
    check_quantize(mode)
    try:
        import bitsandbytes  # noqa: F401  # transformers imports it lazily and fails later
    except ImportError as exc:
        raise GuardtuneError(
            f"--quantize {mode}: needs bitsandbytes (pip install 'guardtune[quantize]')"
        ) from exc
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


# Where each 4-bit layer keeps its weights in bitsandbytes' own layout while they are packed.
_UNPACKED = "_guardtune_unpacked_4bit"


def unpack_4bit_for_gradients(model: torch.nn.Module) -> None:
    """Make every bitsandbytes 4-bit layer of ``model`` run its unpacked kernel when gradients flow.

    On CPUs with AVX-512 BF16, bitsandbytes repacks 4-bit weights for a fast inference kernel
    (``gemv_4bit``) on the first no-grad forward pass in evaluation mode, and later calls keep
    that kernel whatever the mode. It has no backward: the gradient with respect to the layer's
    input comes back as nothing, so LoRA trained on a packed base learns with the gradient through
    every frozen projection missing (the loss still falls). Call this before the first pass: each
    4-bit layer keeps its weights as quantised, and hooks put them back before a forward pass with
    gradients on and before the state dict is read (which bitsandbytes does by inverting the
    packing, re-quantising the scales: not exact). bitsandbytes packs them again on the next
    no-grad pass in evaluation mode, as a fresh load would. Every load keeps them, inference too:
    loading an adapter reads the state dict, so without the kept weights a reload would score
    1e-4 to 1e-3 away from the model it was saved from. Costs one more copy of the 4-bit weights
    (124 MB resident for the embedded Gemma 3 270M).
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, Linear4bit) and not hasattr(module, _UNPACKED):
            weight: Any = module.weight
            # A copy: packing rewrites the quant state it is given in place.
            setattr(module, _UNPACKED, (weight.data, copy.copy(weight.quant_state)))
            module.register_forward_pre_hook(_unpacked_when_gradients_flow)
            module.register_state_dict_pre_hook(_unpacked_before_saving)


def _unpack(module: torch.nn.Module) -> None:
    weight: Any = module.weight
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        data, state = getattr(module, _UNPACKED)
        weight.data, weight.quant_state = data, copy.copy(state)


def _unpacked_when_gradients_flow(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
    if torch.is_grad_enabled():
        _unpack(module)


def _unpacked_before_saving(module: torch.nn.Module, prefix: str, keep_vars: bool) -> None:
    _unpack(module)
