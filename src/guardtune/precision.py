"""int8 inference on the CPU: the decoder's projections as int8, everything else in float.

``--dtype int8`` keeps the embedding, the norms, attention and the classifier head in bf16 (fp32
where the CPU has no native bf16) and runs every linear projection of the decoder layers (q, k,
v, o, gate, up, down: after the adapter is merged into them) as int8 weights with one scale per
output channel, and activations quantised to int8 with one scale per token from their observed
range ("dynamic" quantisation: nothing to calibrate), multiplied by oneDNN's int8 linear
(``torch.ops.onednn.qlinear_pointwise``, the weights packed once into its layout);
``GUARDTUNE_INT8_ACTIVATIONS=tensor`` runs torch's quantised linear (fbgemm / oneDNN, one uint8
range per call) instead. A single message reads half the weight bytes of bf16, and AVX-512 VNNI /
AMX run int8 dot products at about twice the bf16 rate.

On a CPU with AVX2 but none of those (most AMD EPYC / Ryzen before Zen 4, Intel before Ice Lake),
where the float precision is fp32, the per-token path multiplies with fbgemm's AVX2 kernels
instead (``torch.ops.quantized.linear_dynamic``, the ``fbgemm`` kernel): each token is divided by
its own scale first, so fbgemm's one range per call is one range per token, and the weights keep 7
bits (|w| <= 63), as AVX2's 8-bit multiply-add sums two products into 16 bits that 8-bit weights
would saturate. Sibling projections' weights are stacked (q, k, v; gate, up), so a layer makes four
calls of the kernel instead of seven (:class:`FbgemmProjections`).

Where int8 cannot run (neither VNNI, AMX nor AVX2 on the CPU, a CUDA device, a torch without the
quantised ops) the model falls back to its float precision with a one-line warning.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import itertools
import mmap
import os
import re
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from guardtune.errors import GuardtuneError

INT8 = "int8"
# CPU flags of native int8 dot products (32-bit sums of four products), what oneDNN's packed int8
# linear needs: on AVX2 alone it ran no faster than fp32 here and saturated (below).
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# Without them, AVX2's 8-bit multiply-add (vpmaddubsw) sums two uint8 x int8 products into a
# saturating int16: 2 x 255 x 127 overflows it, 2 x 255 x 63 does not. oneDNN's linear on 8-bit
# weights lost 45% of a projection's output to it on an AMD EPYC (AVX2); fbgemm's AVX2 kernels
# on 7-bit weights ran 2.1x fp32 for one token's projections, 3.0x for 12 tokens (docs/int8.md).
AVX2_FLAG = "avx2"
# The int8 matrix kernels: oneDNN's packed linear (VNNI / AMX) and fbgemm's dynamic linear (AVX2).
KERNELS = ("onednn", "fbgemm")
# Which kernel runs the per-token path (the default is the CPU's: onednn with VNNI or AMX, else fbgemm).
KERNEL_ENV = "GUARDTUNE_INT8_KERNEL"
# Largest int8 weight per kernel: 7 bits for fbgemm, so that no pair of products saturates on AVX2.
WEIGHT_LEVELS = {"onednn": 127, "fbgemm": 63}
# Modules inside a PEFT LoRA layer that are the adapter itself (kept in float, unmerged adapters
# add their small low-rank product to the int8 result).
_ADAPTER_PARTS = ("lora_A", "lora_B", "lora_magnitude_vector")
# torch's x86 quantised engines; the packed weight remembers the engine it was packed for.
_ENGINES = ("x86", "fbgemm", "onednn")
# Which of them packs the weights (to compare kernels; the default is the one measured fastest).
ENGINE_ENV = "GUARDTUNE_INT8_ENGINE"
DEFAULT_ENGINE = "x86"
# Which projections stay in float: projection names (``down_proj``), ``first`` / ``last`` or a
# layer's index (a whole decoder layer), ``INDEX.NAME`` (one layer's projection, ``1.down_proj``), or
# ``none`` (the default: with per-token activation scales every projection
# agreed with bf16 on all validation messages; docs/int8.md has the table that chose it).
FLOAT_ENV = "GUARDTUNE_INT8_FLOAT"
DEFAULT_FLOAT: tuple[str, ...] = ()
# How activations are quantised per call: ``token`` (one int8 range per token, oneDNN's packed linear
# with the scales applied after; the default) or ``tensor`` (one uint8 range per call, torch's
# quantised linear). With one range per call, the few large channels of the MLP's gated
# activations (``down_proj``'s input) in any token of a batch left every other token a handful of
# levels: 94% agreement with bf16 on validation against 100% per token. ``weights`` keeps the
# activations in float (int8 weights only, ``torch._weight_int8pack_mm``): a third of the score
# change of ``token``; with ``--compile`` a single message about as fast, batches slower; without
# it slower than bf16, as torch's eager kernel for it is slow (docs/int8.md).
ACTIVATION_ENV = "GUARDTUNE_INT8_ACTIVATIONS"
ACTIVATION_MODES = ("token", "tensor", "weights")
DEFAULT_ACTIVATIONS = "token"
_LAYER_WORDS = ("first", "last")
# A layer's index as written in GUARDTUNE_INT8_FLOAT: ASCII digits, no sign, no leading zero.
_LAYER_INDEX = re.compile(r"0|[1-9][0-9]*")
# Per-token activations are symmetric int8 values stored as uint8 with this offset: oneDNN's int8
# products take unsigned activations and signed weights (the form VNNI multiplies natively).
ACTIVATION_ZERO_POINT = 128
# Projections that a decoder layer calls, in this order, on one and the same input tensor.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# Where ``compile_decoder`` keeps the decoder's own forward: re-scoring in float runs it eagerly (the
# compiled graphs hold the int8 weights as constants).
EAGER_FORWARD = "_guardtune_eager_forward"
# What sibling projections share (SharedInput).
Value = TypeVar("Value")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read), read once."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(text.split())


def cpu_int8_kernel() -> str | None:
    """The int8 kernel this CPU runs best: ``onednn`` with native int8 dot products (AVX-512 VNNI,
    AVX-VNNI or AMX-INT8), ``fbgemm`` with AVX2 alone, ``None`` without either."""
    flags = cpu_flags()
    if any(flag in flags for flag in INT8_CPU_FLAGS):
        return "onednn"
    return "fbgemm" if AVX2_FLAG in flags else None


def cpu_supports_int8() -> bool:
    """True when the CPU runs one of guardtune's int8 kernels (VNNI, AMX or AVX2)."""
    return cpu_int8_kernel() is not None


def int8_kernel() -> str:
    """The kernel of the per-token path: ``GUARDTUNE_INT8_KERNEL`` or the CPU's
    (:func:`cpu_int8_kernel`; ``onednn`` where it names none)."""
    kernel = os.environ.get(KERNEL_ENV) or cpu_int8_kernel() or "onednn"
    if kernel not in KERNELS:
        raise GuardtuneError(f"{KERNEL_ENV}={kernel!r}: expected one of {', '.join(KERNELS)}")
    return kernel


def int8_unavailable_reason() -> str | None:
    """Why int8 projections cannot run here, or ``None`` when they can."""
    if torch.cuda.is_available():
        return "int8 projections run on the CPU only and this model runs on CUDA"
    onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
    if (
        not onednn
        or not hasattr(torch, "quantize_per_channel")
        or not hasattr(torch.ops.quantized, "linear_dynamic")
    ):
        return (
            f"torch {torch.__version__} lacks an int8 kernel guardtune uses "
            "(torch.ops.onednn.qlinear_pointwise, torch.ops.quantized.linear_dynamic)"
        )
    engines = [e for e in _ENGINES if e in torch.backends.quantized.supported_engines]
    if not engines:
        return "torch has no x86 quantised engine (fbgemm / oneDNN) on this machine"
    if not cpu_supports_int8():
        return "this CPU has no int8 kernel guardtune can use (AVX-512 VNNI, AVX-VNNI, AMX or AVX2)"
    if int8_kernel() == "fbgemm" and "fbgemm" not in torch.backends.quantized.supported_engines:
        return "torch has no fbgemm engine, which runs int8 on CPUs without VNNI or AMX"
    return None


def resolve_int8(float_name: str) -> bool:
    """Whether ``--dtype int8`` runs as int8 here; warns in one line when it falls back to
    ``float_name`` (the precision the rest of the model runs in)."""
    reason = int8_unavailable_reason()
    if reason is None:
        return True
    warnings.warn(f"--dtype int8: {reason}; running {float_name} instead", stacklevel=3)
    return False


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` as int8 weights (one scale per output row); activations quantised per
    token (``token``: oneDNN's packed int8 linear, or fbgemm's on rows divided by their scales) or
    per call (``tensor``: torch's quantised linear); input and output keep their float dtype."""

    def __init__(
        self,
        linear: nn.Linear,
        engine: str = "x86",
        activations: str = DEFAULT_ACTIVATIONS,
        keep_float: bool = False,
        kernel: str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.engine = engine
        self.activations = activations
        self.kernel = kernel or int8_kernel()
        if self.kernel not in KERNELS:
            raise GuardtuneError(f"int8 kernel {self.kernel!r}: expected one of {', '.join(KERNELS)}")
        # With ``keep_float`` the float weights stay beside their int8 form, for messages re-scored
        # in float (:func:`float_projections`; ``--int8-recheck``); ``run_float`` switches to them.
        # Plain tensors, not parameters: the parameter count and state dict stay the int8 model's.
        self.float_weight = linear.weight.detach() if keep_float else None
        self.float_bias = None if linear.bias is None or not keep_float else linear.bias.detach()
        self.run_float = False
        # Set by quantize_projections on projections that read the same input (q, k, v; gate, up):
        # oneDNN's quantise that input once (shared_input); fbgemm's multiply it once by their
        # stacked weights (fbgemm, whose outputs this one is number ``member`` of).
        self.shared_input: SharedInput[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.last_reader = True
        self.fbgemm: FbgemmProjections | None = None
        self.member = 0
        weight = linear.weight.detach().float()
        # Symmetric per-row scales: a row with small weights keeps its resolution when another
        # row has large ones (per-tensor scales lost labels on the embedded Gemma).
        levels = 127 if activations == "weights" else WEIGHT_LEVELS[self.kernel]
        scales = (weight.abs().amax(dim=1) / levels).clamp_min(1e-12).double()
        self._bias = None if linear.bias is None else linear.bias.detach().float()
        if activations == "weights":
            # Plain int8 rows (Inductor packs them into its own layout when the decoder is
            # compiled with freezing) against scales already rounded to the model's dtype, which
            # the kernel takes them in: no row carries that rounding as an error.
            self._weight_scales = scales.to(linear.weight.dtype)
            rows = torch.round(weight / self._weight_scales.float()[:, None]).clamp_(-127, 127)
            self._int8_weight = rows.to(torch.int8)
            return
        if activations == "token" and self.kernel == "onednn":
            # Packed once into oneDNN's blocked layout: unpacked int8 weights (``torch._int_mm``)
            # are reordered on every call, which made a forward pass slower than bf16's.
            int8_weight = torch.round(weight / scales.float()[:, None]).to(torch.int8)
            self._packed = torch.ops.onednn.qlinear_prepack(int8_weight, None)
            self._scales = scales.float()
            self._zero_points = torch.zeros(self.out_features, dtype=torch.long)
            return
        if activations == "token":
            # The per-token rows are scaled by their own scales, so the bias comes after the product.
            self.fbgemm = FbgemmProjections(
                quantise_per_row(weight, scales), (self.out_features,), self._bias
            )
            return
        self._packed = pack_quantised_linear(weight, scales, self._bias, engine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.run_float and self.float_weight is not None:
            return nn.functional.linear(x, self.float_weight, self.float_bias)
        if self.activations == "weights":
            flat = x.reshape(-1, self.in_features)
            y = torch._weight_int8pack_mm(flat, self._int8_weight, self._weight_scales.to(x.dtype))
            if self._bias is not None:
                y = y + self._bias.to(x.dtype)
            return y.reshape(*x.shape[:-1], self.out_features)
        if self.activations == "token":
            return self._forward_per_token(x)
        # The quantised linear takes and returns fp32; reduce_range=False is exact on VNNI / AMX
        # (their int8 products accumulate in int32) and, with 7-bit weights, on AVX2.
        y = torch.ops.quantized.linear_dynamic(x.float(), self._packed, False)
        return y.to(x.dtype)

    def _forward_per_token(self, x: torch.Tensor) -> torch.Tensor:
        if self.fbgemm is not None:
            return self.fbgemm.output(self.member, x, self.last_reader)
        shared = self.shared_input
        quantised, scale = shared.get(x, self.last_reader, quantise_rows) if shared else quantise_rows(x)
        # The kernel applies the weights' scales; the tokens' own scales multiply its result (the
        # kernel takes one activation scale per call), and the bias comes after them.
        y = torch.ops.onednn.qlinear_pointwise(
            quantised,
            1.0,
            ACTIVATION_ZERO_POINT,
            self._packed,
            self._scales,
            self._zero_points,
            None,
            1.0,
            0,
            x.dtype,
            "none",
            [],
            "",
        ).mul_(scale.to(x.dtype))
        if self._bias is not None:
            y = y.add_(self._bias)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, engine={self.engine}, "
            f"activations={self.activations}, kernel={self.kernel}"
        )


class FbgemmProjections:
    """fbgemm's packed int8 weights of one projection, or of sibling projections that read one input
    (q, k, v; gate, up) stacked into one matrix: one call multiplies the input by all of them.

    On a single message fbgemm's AVX2 kernel spends much of a call outside the product itself: a
    Gemma 3 270M layer's projections as four calls took 615 us for 12 tokens, as seven 761 us
    (docs/int8.md). Each sibling returns its own columns of the product (a view, not contiguous;
    the decoders guardtune runs only split its last dimension into heads); the first to read an
    input computes it.
    """

    def __init__(self, qweight: torch.Tensor, sizes: tuple[int, ...], bias: torch.Tensor | None) -> None:
        # The int8 rows (a per-row quantised tensor) until they are packed: stacking reads them,
        # so siblings are quantised and packed once each, not packed, unpacked and packed again.
        self.qweight: torch.Tensor | None = qweight
        self._packed: Any = None
        self.sizes = sizes
        self.out_features = sum(sizes)
        self.bias = bias
        self.outputs: SharedInput[tuple[torch.Tensor, ...]] = SharedInput()
        self.index = next(_FBGEMM_INDICES)
        _FBGEMM_WEIGHTS[self.index] = self

    def pack(self) -> Any:
        """The weights packed for fbgemm's kernel, packed by the first call (which drops the rows)."""
        if self._packed is None:
            assert self.qweight is not None
            self._packed, self.qweight = _prepack(self.qweight, "fbgemm"), None
        return self._packed

    def int8_rows(self) -> torch.Tensor:
        """The int8 rows as a per-row quantised tensor (unpacked again if already packed)."""
        return self.qweight if self.qweight is not None else self.pack().unpack()[0]

    @classmethod
    def stack(cls, members: list[FbgemmProjections]) -> FbgemmProjections:
        """One matrix of the members' int8 rows (and their scales and biases), in their order."""
        weights = [m.int8_rows() for m in members]
        rows = torch.cat([w.int_repr() for w in weights])
        scales = torch.cat([w.q_per_channel_scales() for w in weights])
        stacked = torch._make_per_channel_quantized_tensor(rows, scales, torch.zeros_like(scales).long(), 0)
        bias = None
        if any(m.bias is not None for m in members):
            bias = torch.cat([torch.zeros(m.out_features) if m.bias is None else m.bias for m in members])
        return cls(stacked, tuple(size for m in members for size in m.sizes), bias)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` times every stacked projection (all their columns), in ``x``'s dtype."""
        # Every row spans [-127, 127] after its division, so the kernel's one uint8 range per call
        # quantises each token on its own scale.
        rows, scale = scale_rows(x)
        if torch.compiler.is_compiling():
            # One opaque op: TorchInductor cannot trace fbgemm's packed weights, and without it each
            # projection broke the graph (29 graphs, slower than eager). The scaling around it is
            # traced, so the compiler fuses it into the neighbouring kernels.
            y = torch.ops.guardtune.fbgemm_linear(rows, self.index) * scale
        else:
            y = torch.ops.quantized.linear_dynamic(rows, self.pack(), False).mul_(scale)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def output(self, member: int, x: torch.Tensor, last_reader: bool) -> torch.Tensor:
        """Projection ``member``'s output for ``x``: its columns of :meth:`product`."""
        if len(self.sizes) == 1:
            return self.product(x)
        if torch.compiler.is_compiling():
            # Each sibling's graph node is the same call on the same input, which the compiler's
            # common-subexpression pass keeps once: that pass runs in Inductor's freezing, which
            # compile_decoder turns on and which applies to graphs run without gradients, as
            # prediction's are. Elsewhere each sibling would compute the whole product (still right).
            return self.product(x).split(self.sizes, dim=-1)[member]
        parts = self.outputs.get(x, last_reader, lambda t: self.product(t).split(self.sizes, dim=-1))
        return parts[member]


# fbgemm weights by index, for the compiled path's custom op (its arguments can only be tensors
# and numbers, not the packed weights); weak, so that dropped models (and the single projections'
# weights that stacking replaces) leave it.
_FBGEMM_WEIGHTS: weakref.WeakValueDictionary[int, FbgemmProjections] = weakref.WeakValueDictionary()
_FBGEMM_INDICES = itertools.count()


def _fbgemm_weights(index: int) -> FbgemmProjections:
    weights = _FBGEMM_WEIGHTS.get(index)
    if weights is None:
        raise GuardtuneError(f"int8 weights {index} were freed while a compiled graph still calls them")
    return weights


@torch.library.custom_op("guardtune::fbgemm_linear", mutates_args=())
def fbgemm_linear(rows: torch.Tensor, index: int) -> torch.Tensor:
    """fbgemm's int8 product of float32 ``rows`` (one range per call) by weights ``index``."""
    return torch.ops.quantized.linear_dynamic(rows, _fbgemm_weights(index).pack(), False)


@fbgemm_linear.register_fake
def _fbgemm_linear_shape(rows: torch.Tensor, index: int) -> torch.Tensor:
    return rows.new_empty(rows.shape[0], _fbgemm_weights(index).out_features)


def pack_quantised_linear(
    weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, engine: str
) -> Any:
    """fp32 ``weight`` as int8 rows (:func:`quantise_per_row`), packed with its ``bias`` for torch's
    quantised linear by ``engine`` (``fbgemm``, ``onednn`` or ``x86``)."""
    return _prepack(quantise_per_row(weight, scales), engine, bias)


def quantise_per_row(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 ``weight`` as torch's per-row quantised int8 tensor, ``round(weight / scales)``."""
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch marks its quantised tensor type as deprecated in favour of torchao, whose
        # CPU int8 path (eager) measured slower than bf16 here; the kernels are the same.
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_channel(weight, scales.double(), zero_points, 0, torch.qint8)


def _prepack(qweight: torch.Tensor, engine: str, bias: torch.Tensor | None = None) -> Any:
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        return torch.ops.quantized.linear_prepack(qweight, bias)
    finally:
        torch.backends.quantized.engine = previous


def scale_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (bf16 or fp32) as float32 rows (one per token) divided by their scales, each row's
    largest value becoming +-127, and those float32 scales."""
    flat = x.reshape(-1, x.shape[-1])
    # One scale per token: a message's outlier channels no longer coarsen the others' tokens. The
    # largest value is exact in x's own dtype (half the bytes of an fp32 copy for bf16), and
    # abs + amax ran 2-3x faster here than the one-call infinity norm (torch.linalg.vector_norm).
    scale = flat.abs().amax(dim=1, keepdim=True).float().clamp_min_(1e-8).div_(127.0)
    # One pass that also promotes to float32 (the scales' dtype): the same values as an fp32 copy
    # divided in place, in half the time on fp32 rows (800 x 640: 41 us against 100 us, AVX2).
    return torch.div(flat, scale), scale


def quantise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as 8-bit rows (one per token) and their float32 scales: symmetric, one scale per row
    from the row's largest value, stored as uint8 around :data:`ACTIVATION_ZERO_POINT`."""
    rows, scale = scale_rows(x)
    # round(v + 128) == round(v) + 128 for |v| <= 127: 128 is even, so ties round alike.
    return rows.add_(ACTIVATION_ZERO_POINT).round_().to(torch.uint8), scale


class SharedInput(Generic[Value]):
    """What sibling projections compute from the one input they read (q, k and v; gate and up).

    Quantising an activation takes several small operations, which on a single message cost
    about as much as the int8 product saves; siblings that are called on the same tensor reuse
    the first one's result (oneDNN: the quantised input; fbgemm: the product of their stacked
    weights). The tensor is recognised by identity (never by value), and by its version where it
    keeps one (tensors made under ``inference_mode``, as in prediction, do not), so a sibling
    called on anything else computes its own; the last sibling drops the result.
    """

    def __init__(self) -> None:
        self._source: weakref.ref[torch.Tensor] | None = None
        self._version = -1
        self._value: Value | None = None

    def get(self, x: torch.Tensor, last_reader: bool, compute: Callable[[torch.Tensor], Value]) -> Value:
        """``compute(x)``, run by the first sibling that reads ``x``; siblings share one ``compute``."""
        source = self._source() if self._source is not None else None
        version = _version(x)
        if self._value is not None and source is x and version == self._version:
            value = self._value
        else:
            value = compute(x)
            self._source, self._version, self._value = weakref.ref(x), version, value
        if last_reader:
            self._source, self._value = None, None
        return value


def _version(x: torch.Tensor) -> int:
    # Tensors made under inference_mode keep no version counter; nothing in a decoder layer
    # writes into its input between two sibling projections.
    return -1 if x.is_inference() else x._version


def share_inputs(projections: dict[str, Int8Linear]) -> int:
    """Let sibling projections (q, k, v; gate, up) that read one input quantise it once (oneDNN),
    or multiply it once by their weights stacked into one matrix (fbgemm).

    Args:
        projections: per-token int8 projections by their module path (``0.self_attn.q_proj``, or
            ``0.self_attn.q_proj.base_layer`` under an unmerged adapter).

    Returns:
        How many groups share an input.
    """
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[int, Int8Linear]]] = {}
    for path, module in projections.items():
        parts = path.split(".")
        if parts[-1] == "base_layer":
            parts = parts[:-1]
        parent, name = ".".join(parts[:-1]), parts[-1]
        for siblings in SIBLINGS:
            if name in siblings:
                groups.setdefault((parent, siblings), []).append((siblings.index(name), module))
    shared = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda member: member[0])
        modules = [module for _, module in members]
        fbgemm = [module.fbgemm for module in modules if module.fbgemm is not None]
        if any(len(weights.sizes) > 1 for weights in fbgemm):
            continue  # stacked by an earlier call
        if len(fbgemm) == len(modules):
            stacked = FbgemmProjections.stack(fbgemm)
            for position, module in enumerate(modules):
                module.fbgemm, module.member = stacked, position
        elif not fbgemm:
            group: SharedInput[tuple[torch.Tensor, torch.Tensor]] = SharedInput()
            for module in modules:
                module.shared_input = group
        else:
            continue  # one kernel runs every projection; nothing to share between two
        for position, module in enumerate(modules):
            module.last_reader = position == len(modules) - 1
        shared += 1
    return shared


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


def release_pages(tensor: torch.Tensor) -> None:
    """Give the whole memory pages of a tensor about to be dropped back to the system (Linux).

    The base's weights are memory-mapped from one safetensors file whose mapping lives as long as
    the embedding does, so a dropped bf16 projection stays resident (merging wrote into its pages)
    unless told otherwise: 200 MB on the embedded Gemma. Only the pages entirely inside the tensor
    are released; the caller guarantees nothing else reads them (for a private file mapping a
    later read would see the file's bytes, for anonymous memory zeros).
    """
    libc = _libc()
    madvise = getattr(libc, "madvise", None)
    if madvise is None or tensor.device.type != "cpu" or not tensor.is_contiguous():
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page
    if last > first:
        madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED)


def causal_lm(model: nn.Module) -> Any:
    """The causal LM itself: ``model``, or the one inside a PEFT model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _decoder_layers(model: nn.Module) -> nn.Module:
    return causal_lm(model).get_decoder().layers


def is_quantized(model: nn.Module) -> bool:
    """True when any projection of ``model`` already runs as :class:`Int8Linear`."""
    return any(isinstance(module, Int8Linear) for module in model.modules())


def int8_engine() -> str:
    """The quantised engine that packs int8 weights: ``GUARDTUNE_INT8_ENGINE`` or the default."""
    engine = os.environ.get(ENGINE_ENV) or DEFAULT_ENGINE
    if engine not in torch.backends.quantized.supported_engines or engine not in _ENGINES:
        found = [e for e in _ENGINES if e in torch.backends.quantized.supported_engines]
        raise GuardtuneError(f"{ENGINE_ENV}={engine!r}: expected one of {', '.join(found)}")
    return engine


def int8_float_parts() -> tuple[str, ...]:
    """What stays in float under ``--dtype int8``: ``GUARDTUNE_INT8_FLOAT`` (comma-separated) or
    :data:`DEFAULT_FLOAT`; ``none`` quantises every projection."""
    raw = os.environ.get(FLOAT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_FLOAT
    parts = tuple(p.strip() for p in raw.split(",") if p.strip())
    if parts == ("none",):
        return ()
    bad = [p for p in parts if not _is_float_part(p)]
    if bad or "none" in parts:
        raise GuardtuneError(
            f"{FLOAT_ENV}={raw!r}: expected 'none' or comma-separated projection names (down_proj), "
            "layers (first, last, 3) and one layer's projections (3.down_proj)"
        )
    return parts


def _is_float_part(part: str) -> bool:
    layer, dot, name = part.rpartition(".")
    if dot:
        return _is_layer(layer) and _is_projection(name)
    return _is_layer(part) or _is_projection(part)


def _is_layer(word: str) -> bool:
    return word in _LAYER_WORDS or _LAYER_INDEX.fullmatch(word) is not None


def _is_projection(name: str) -> bool:
    return name.endswith("_proj") and name != "_proj"


# What stays in float: layers kept whole, projection names kept in every layer, (layer, name) pairs.
FloatSelection = tuple[set[str], set[str], set[tuple[str, str]]]


def float_selection(keep: tuple[str, ...], layer_count: int) -> FloatSelection:
    """``keep`` (see :func:`int8_float_parts`) as the layers kept whole, the projection names kept in
    every layer, and the ``(layer, name)`` pairs kept in one layer, with ``first`` / ``last`` and
    indices as the layers' own names (``"0"``, ``"17"``). An index past the last layer stops with
    a one-line error."""

    def layer_name(word: str) -> str:
        index = {"first": 0, "last": layer_count - 1}.get(word)
        index = int(word) if index is None else index
        if index >= layer_count:
            raise GuardtuneError(
                f"{FLOAT_ENV}: layer {word} does not exist "
                f"(the model has {layer_count} decoder layers, 0-{layer_count - 1})"
            )
        return str(index)

    layers: set[str] = set()
    names: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for part in keep:
        layer, dot, name = part.rpartition(".")
        if dot:
            pairs.add((layer_name(layer), name))
        elif _is_layer(part):
            layers.add(layer_name(part))
        else:
            names.add(part)
    return layers, names, pairs


def stays_float(path: str, selection: FloatSelection) -> bool:
    """Whether the module at ``path`` under the decoder layers (``5.mlp.down_proj``, or under PEFT
    ``5.mlp.down_proj.base_layer``) is kept in float by ``selection`` (:func:`float_selection`)."""
    layers, names, pairs = selection
    layer, *inner = path.split(".")
    return layer in layers or any(p in names or (layer, p) in pairs for p in inner)


def quantize_projections(
    model: nn.Module,
    engine: str | None = None,
    keep_float: tuple[str, ...] | None = None,
    merge_adapter: str | None = None,
    float_copies: bool = False,
) -> int:
    """Replace every linear projection of the decoder layers by an :class:`Int8Linear`, in place.

    LoRA adapters must already be on the model (PEFT cannot add one to an int8 layer): a merged
    adapter is inside the weights that get quantised; an unmerged one keeps its float low-rank
    matrices beside the int8 base layer. The embedding, the LM head and the classifier head are
    outside the decoder layers and keep their dtype.

    Args:
        engine: ``x86``, ``fbgemm`` or ``onednn``; default: :func:`int8_engine`.
        keep_float: projection names, layers (``first``, ``last``, an index) and one layer's
            projections (``1.down_proj``) left in float; default: :func:`int8_float_parts`.
        merge_adapter: an adapter to fold into each projection just before that projection is
            quantised (PEFT's per-layer merge), instead of merging all of them first: the
            merged float weights of one projection are resident at a time, not of all of them
            (on Gemma 3 270M the load's peak falls by about 100 MB). Projections kept in float
            are merged too, so the result is the same as merging first.
        float_copies: keep each projection's (merged) float weights beside its int8 form, so that
            :func:`float_projections` can run the model as the float model runs: they stay
            resident (200 MB more on Gemma 3 270M in bf16).

    Returns:
        How many projections were quantised.
    """
    engine = engine or int8_engine()
    kernel = int8_kernel()
    activations = os.environ.get(ACTIVATION_ENV) or DEFAULT_ACTIVATIONS
    if activations not in ACTIVATION_MODES:
        raise GuardtuneError(f"{ACTIVATION_ENV}={activations!r}: expected token, tensor or weights")
    keep = int8_float_parts() if keep_float is None else keep_float
    layers = _decoder_layers(model)
    count = len(list(layers.children()))
    selection = float_selection(keep, count)
    targets = []
    for name, module in layers.named_modules():
        parts = name.split(".")
        if stays_float(name, selection):
            continue
        if isinstance(module, nn.Linear) and not any(p in parts for p in _ADAPTER_PARTS):
            parent = layers.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else layers
            targets.append((name, parent, parts[-1], module))
    from peft.tuners.tuners_utils import BaseTunerLayer

    if merge_adapter is not None:
        _merge_kept_float(model, targets, merge_adapter)
    quantised = {}
    for path, parent, child, linear in targets:
        if merge_adapter is not None and isinstance(parent, BaseTunerLayer):
            parent.merge(adapter_names=[merge_adapter])
        quantised[path] = Int8Linear(linear, engine, activations, keep_float=float_copies, kernel=kernel)
        setattr(parent, child, quantised[path])
        if not float_copies and sys.getrefcount(linear.weight) <= 2:  # the module's and the argument's
            release_pages(linear.weight.data)
    if activations == "token":
        share_inputs(quantised)
    for module in quantised.values():
        if module.fbgemm is not None:
            module.fbgemm.pack()  # at load, not in the first message
    return len(targets)


def _merge_kept_float(
    model: nn.Module, targets: list[tuple[str, nn.Module, str, nn.Linear]], adapter: str
) -> None:
    """Merge ``adapter`` into the adapter layers of ``model`` (PEFT's tuner layers: LoRA, trainable
    tokens) other than those around the projections about to be quantised."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    quantised_parents = {id(parent) for _, parent, _, _ in targets}
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and id(module) not in quantised_parents:
            module.merge(adapter_names=[adapter])


def upcast_float_parts(model: nn.Module, dtype: torch.dtype) -> int:
    """Bring every float weight of ``model`` but its input embedding to ``dtype``, after its
    projections were quantised from weights loaded in a narrower dtype; returns how many changed.

    ``--dtype int8`` on a CPU without native bf16 runs everything but the int8 projections in fp32,
    yet loads a bf16 base as bf16 (:func:`guardtune.backbone.load_backbone`): its projections are
    quantised straight from the memory-mapped file, and the embedding (a third of Gemma 3 270M's
    parameters, 671 MB in fp32) stays there as bf16, only the rows a batch looks up are read and
    cast. An output embedding tied to it (the LM head) reads its input in bf16 and returns ``dtype``.
    """
    embedding = causal_lm(model).get_input_embeddings()
    kept = {id(p) for p in embedding.parameters()}
    changed = 0
    for module in model.modules():
        if isinstance(module, Int8Linear) and module.float_weight is not None:
            module.float_weight = module.float_weight.to(dtype)
            module.float_bias = None if module.float_bias is None else module.float_bias.to(dtype)
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for _, tensor in tensors:
            if id(tensor) in kept or not tensor.is_floating_point() or tensor.dtype == dtype:
                continue
            tensor.data = tensor.data.to(dtype)
            changed += 1
    weight = getattr(embedding, "weight", None)
    stored = None if weight is None else weight.dtype
    if stored is not None and stored != dtype:
        embedding.register_forward_hook(lambda _module, _args, output: output.to(dtype))
        head = causal_lm(model).get_output_embeddings()
        if head is not None and getattr(head, "weight", None) is weight:
            head.register_forward_pre_hook(lambda _module, args: tuple(a.to(stored) for a in args))
            head.register_forward_hook(lambda _module, _args, output: output.to(dtype))
    return changed


@contextlib.contextmanager
def float_projections(model: nn.Module) -> Iterator[None]:
    """Run every int8 projection of ``model`` on the float weights it kept (see
    ``quantize_projections(float_copies=True)``) inside the block, and a compiled decoder eagerly:
    a batch then gets the scores the float model gives it.

    Raises:
        GuardtuneError: a projection kept no float layer.
    """
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    if any(m.float_weight is None for m in layers):
        raise GuardtuneError("int8 projections kept no float weights to re-score with (float_copies)")
    decoder = causal_lm(model).get_decoder()
    compiled_forward = decoder.__dict__.get("forward")
    eager_forward = getattr(decoder, EAGER_FORWARD, None)
    for layer in layers:
        layer.run_float = True
    if compiled_forward is not None and eager_forward is not None:
        decoder.forward = eager_forward
    try:
        yield
    finally:
        for layer in layers:
            layer.run_float = False
        if compiled_forward is not None and eager_forward is not None:
            decoder.forward = compiled_forward
