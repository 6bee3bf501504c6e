"""``--quantize 4bit|8bit``: the frozen base held in bitsandbytes' k-bit layers, LoRA trained on top.

4-bit is QLoRA's recipe (NF4 weights, double quantisation of the scales, bf16 compute); 8-bit is
LLM.int8(). The LoRA adapter, the head and the LM head stay unquantised. bitsandbytes runs on
CUDA and, from release 0.46, on CPUs (its ``cpu`` backend), which is what the tests here use.
"""

from __future__ import annotations

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
