"""``--compile``: the decoder of a classifier compiled by ``torch.compile`` for long prediction runs.

In eager mode a short message spends most of its time between the matrix products: each of the
decoder's several hundred small operations (norms, rotary embedding, attention, dtype casts) is a
separate call. TorchInductor fuses them into a few generated C++ kernels, and with ``freezing``
it treats the weights as constants, which is also what lets it keep the int8 projections' packed
oneDNN weights (:class:`guardtune.precision.Int8Linear`) in the graph; fbgemm's (CPUs with AVX2
alone) enter it as one opaque custom op per product (``guardtune::fbgemm_linear``), the scaling
around it traced and fused.
The price is compile time: two graphs (a single message, and batches of any size and length,
through dynamic shapes), a few minutes on a 2-core CPU, paid by the first calls of each process.
So it pays off on files of tens of thousands of messages, not on a quick check; docs/int8.md has
the figures.

Only the ``head`` method: the prompt methods continue a cached prompt prefix or decode token by
token, shapes that would compile graphs of their own.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from guardtune.errors import GuardtuneError
from guardtune.precision import EAGER_FORWARD, Int8Linear, causal_lm

COMPILABLE_METHODS = ("head",)
# Set to 0 to compile without autotuning the matrix products (see compile_decoder).
AUTOTUNE_ENV = "GUARDTUNE_COMPILE_AUTOTUNE"


def check_compilable(method_name: str, owns_backbone: bool) -> None:
    """Refuse ``--compile`` in one line where it cannot run (before the base loads)."""
    if method_name not in COMPILABLE_METHODS:
        raise GuardtuneError(
            f"--compile: supported for the {', '.join(COMPILABLE_METHODS)} method only, not {method_name!r}"
        )
    if not owns_backbone:
        raise GuardtuneError("--compile: needs a base of its own, not a shared backbone")
    _check_compiler()


def _check_compiler() -> None:
    # Inductor writes C++ for the CPU and builds it with the system compiler; without one the
    # first call would fail deep inside torch.
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # torch raises several kinds for a missing compiler
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GuardtuneError(f"--compile: needs a C++ compiler for TorchInductor ({first_line})") from exc


def compile_decoder(model: Any) -> None:
    """Compile the decoder of ``model`` (a causal LM or a PEFT model around one) in place.

    Sets, for the whole process, TorchInductor's ``freezing`` (weights become constants of the
    graphs, which the int8 projections need; passed as this compilation's own option instead, it
    did not reach the int8 lowering), its C++ wrapper and, unless ``GUARDTUNE_COMPILE_AUTOTUNE=0``,
    autotuned matrix products, and turns off duck shaping of dynamic sizes. Sibling int8
    projections stop sharing their quantised input in Python
    (:class:`guardtune.precision.SharedInput`); the compiler fuses the quantisation into the
    surrounding kernels instead (oneDNN's), and keeps one of the siblings' identical calls of a
    stacked fbgemm product (:class:`guardtune.precision.FbgemmProjections`; its common-subexpression
    pass runs in ``freezing``, on graphs run without gradients, as prediction runs them). Call
    :func:`check_compilable` first.
    """
    import torch._inductor.config as inductor_config
    import torch.fx.experimental._config as shape_config

    inductor_config.freezing = True
    # The graph's wrapper (the code that calls its kernels) in C++ instead of Python: on the
    # embedded Gemma's single message, int8, p50 16.0 ms instead of 19.1 ms (docs/int8.md).
    inductor_config.cpp_wrapper = True
    # Inductor times its own C++ matrix-product kernels (AMX / AVX-512 micro-kernels) against
    # oneDNN's for each projection and keeps the faster: compiled bf16 347.8 messages/s and p50
    # 14 ms instead of 281.7 and 19, for about 80 s more of compiling. Which kernel wins can differ
    # between cold compiles, and with it the rounding: 0 keeps the kernels fixed.
    inductor_config.max_autotune = os.environ.get(AUTOTUNE_ENV, "1") != "0"
    # Without this a first batch whose size equals its padded length (32 messages of 32 tokens)
    # gets a graph that assumes they are equal, and the next batch compiles a third one.
    shape_config.use_duck_shape = False
    base = causal_lm(model)
    for module in base.modules():
        if isinstance(module, Int8Linear):
            module.shared_input = None
    decoder = base.get_decoder()
    # Kept for re-scoring in float (guardtune.precision.float_projections): the graphs hold the
    # int8 weights as constants.
    setattr(decoder, EAGER_FORWARD, decoder.forward)
    decoder.forward = torch.compile(decoder.forward, dynamic=True)
