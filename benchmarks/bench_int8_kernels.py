"""One forward pass's worth of decoder projections: float against the int8 kernels, same run.

A single message reads every weight once, so the weights here are as many and as large
as a real base's (Gemma 3 270M's shapes by default: 18 layers of q, k, v, o, gate, up and down,
200 MB in bf16) and each is read once per pass, never from a warm cache. Per row count (tokens
in the batch) and kernel, the median time of one pass over every projection:

- ``float``: ``torch.nn.functional.linear`` on float weights, in ``--float`` (by default what
  ``--dtype auto`` runs here: bf16 on CPUs with native bf16, else fp32);
- ``int8 unpacked``: ``torch._int_mm`` on int8 weights in plain layout (oneDNN reorders them on
  every call: guardtune's kernel before 2026-12-04);
- ``int8 packed``: ``torch.ops.onednn.qlinear_pointwise`` on weights packed once into oneDNN's
  layout (what ``--dtype int8`` runs on CPUs with VNNI or AMX), float out;
- ``int8 packed + quantise``: the same with the activations quantised per token first, as
  :class:`guardtune.precision.Int8Linear` does (q, k, v and gate, up share one quantisation);
- ``int8 fbgemm + scale``: fbgemm's dynamic int8 linear on 7-bit weights, each token divided by
  its own scale first (shared like the above), one call per projection;
- ``int8 fbgemm stacked``: guardtune's own fbgemm path
  (:class:`guardtune.precision.FbgemmProjections`), what ``--dtype int8`` runs on CPUs with AVX2
  alone: q, k, v stacked into one matrix and gate, up into another, four calls a layer.

The oneDNN rows on a CPU without VNNI or AMX time a kernel whose 16-bit sums saturate (its results
are wrong there); they are printed for the comparison only. Activations are random: only the time
means anything. Ratios are to the float row of the same run.

    python benchmarks/bench_int8_kernels.py --rows 1 12 64 448 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from guardtune.backbone import float_name, resolve_dtype
from guardtune.precision import (
    ACTIVATION_ZERO_POINT,
    WEIGHT_LEVELS,
    FbgemmProjections,
    int8_unavailable_reason,
    quantise_per_row,
    quantise_rows,
    scale_rows,
)

KERNELS = (
    "float",
    "int8 unpacked",
    "int8 packed",
    "int8 packed + quantise",
    "int8 fbgemm + scale",
    "int8 fbgemm stacked",
)
FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def layer_shapes(
    hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int
) -> list[tuple[int, int]]:
    """(in, out) of one decoder layer's projections in call order: q, k, v, o, gate, up, down."""
    q, kv = heads * head_dim, kv_heads * head_dim
    mlp_in = (hidden, intermediate)
    return [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden), mlp_in, mlp_in, (intermediate, hidden)]


def reads_shared_input(index: int) -> bool:
    """Whether projection ``index`` of a layer reuses the previous one's quantised input (k, v; up)."""
    return index % 7 in (1, 2, 5)


def build_passes(
    shapes: list[tuple[int, int]], rows: int, dtype: torch.dtype = torch.bfloat16
) -> dict[str, Callable[[], None]]:
    """One callable per kernel that runs every projection once on ``rows`` tokens of ``dtype``."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=generator, dtype=dtype) * 0.02 for k, n in shapes]
    int8 = [torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int8) for k, n in shapes]
    transposed = [w.t().contiguous() for w in int8]
    packed = [torch.ops.onednn.qlinear_prepack(w, None) for w in int8]
    scales = [torch.rand(n, generator=generator) / 100 for _, n in shapes]
    zeros = [torch.zeros(n, dtype=torch.long) for _, n in shapes]
    own = [
        FbgemmProjections(fbgemm_weight(w, s), (n,), None)
        for w, s, (_, n) in zip(int8, scales, shapes, strict=True)
    ]
    stacked = stack_siblings(own)
    fbgemm = [projection.pack() for projection in own]
    inputs = {k: torch.randn(rows, k, generator=generator, dtype=dtype) for k, _ in shapes}
    int8_inputs = {
        k: torch.randint(-127, 128, (rows, k), generator=generator, dtype=torch.int8) for k in inputs
    }
    uint8_inputs = {k: quantise_rows(x)[0] for k, x in inputs.items()}
    del int8  # only the layouts the kernels read stay in memory

    def linear(q: torch.Tensor, i: int, out_dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.ops.onednn.qlinear_pointwise(
            q,
            1.0,
            ACTIVATION_ZERO_POINT,
            packed[i],
            scales[i],
            zeros[i],
            None,
            1.0,
            0,
            out_dtype,
            "none",
            [],
            "",
        )

    def float_linear() -> None:
        for i, (k, _) in enumerate(shapes):
            F.linear(inputs[k], weights[i])

    def unpacked() -> None:
        for i, (k, _) in enumerate(shapes):
            torch._int_mm(int8_inputs[k], transposed[i])

    def packed_only() -> None:
        for i, (k, _) in enumerate(shapes):
            linear(uint8_inputs[k], i)

    def packed_quantised() -> None:
        for i, (k, _) in enumerate(shapes):
            if not reads_shared_input(i):  # projection 0 of a layer is never a sharing reader
                quantised, scale = quantise_rows(inputs[k])
            linear(quantised, i).mul_(scale.to(dtype))

    def fbgemm_scaled() -> None:
        for i, (k, _) in enumerate(shapes):
            if not reads_shared_input(i):
                scaled, scale = scale_rows(inputs[k])
            torch.ops.quantized.linear_dynamic(scaled, fbgemm[i], False).mul_(scale).to(dtype)

    def fbgemm_stacked() -> None:
        for (k, _), projections in zip(shapes, stacked, strict=True):
            if projections is not None:
                projections.product(inputs[k])

    passes = (float_linear, unpacked, packed_only, packed_quantised, fbgemm_scaled, fbgemm_stacked)
    return dict(zip(KERNELS, passes, strict=True))


def stack_siblings(projections: list[FbgemmProjections]) -> list[FbgemmProjections | None]:
    """Per projection in call order: the stacked weights where it starts a group of siblings (q;
    gate), its own where it has none (o, down), ``None`` where an earlier sibling multiplies it."""
    stacked: list[FbgemmProjections | None] = []
    for i, own in enumerate(projections):
        if reads_shared_input(i):
            stacked.append(None)
        elif reads_shared_input(i + 1):
            end = i + 1
            while end < len(projections) and reads_shared_input(end):
                end += 1
            stacked.append(FbgemmProjections.stack(projections[i:end]))
        else:
            stacked.append(own)
    return stacked


def fbgemm_weight(int8: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``int8`` weights halved into 7 bits, as guardtune's fbgemm kernel keeps them, as torch's
    per-row quantised tensor."""
    levels = torch.div(int8, 127 // WEIGHT_LEVELS["fbgemm"], rounding_mode="trunc").float()
    return quantise_per_row(levels * scales[:, None], scales)


def median_ms(run: Callable[[], None], repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(2):
            run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 12, 64, 448], help="tokens per call")
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--head-dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--float",
        choices=sorted(FLOAT_DTYPES),
        default=float_name(resolve_dtype("auto", torch.device("cpu"))),
        help="the float row's dtype (default: bf16 where the CPU has native bf16, else fp32)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    reason = int8_unavailable_reason()
    if reason is not None:
        sys.exit(f"bench_int8_kernels: {reason}")
    torch.set_num_threads(args.threads)
    shapes = (
        layer_shapes(args.hidden, args.intermediate, args.heads, args.kv_heads, args.head_dim) * args.layers
    )
    dtype = FLOAT_DTYPES[args.float]
    megabytes = sum(k * n for k, n in shapes) * dtype.itemsize / 1e6
    print(
        f"{len(shapes)} projections, {megabytes:.0f} MB in {args.float}, {args.threads} threads,",
        "torch",
        torch.__version__,
    )
    print(f"| rows | kernel | ms per pass | x {args.float} |\n|---:|---|---:|---:|")
    results: list[dict[str, object]] = []
    for rows in args.rows:
        passes = build_passes(shapes, rows, dtype)
        timings = {name: median_ms(run, args.repeats) for name, run in passes.items()}
        for name, ms in timings.items():
            speedup = timings["float"] / ms
            results.append(
                {
                    "rows": rows,
                    "kernel": name,
                    "float": args.float,
                    "ms": round(ms, 3),
                    "speedup_over_float": round(speedup, 3),
                }
            )
            print(f"| {rows} | {name} | {ms:.2f} | {speedup:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
