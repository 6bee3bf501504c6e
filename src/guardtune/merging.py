"""When an adapter is folded into its base for inference: one policy for the classifier and the server.

Merging removes each LoRA layer's two extra matmuls and casts (about 40% of a message's forward
pass on a CPU). The policy, in fp32 and bf16 alike:

- merge only when the adapter is the only one that will run on the base (a shared base keeps
  every adapter separate, so the others see the weights they were trained against);
- never into a bitsandbytes k-bit base: peft re-quantises the merged weights, which moves scores;
- not under ``--dtype int8`` when something will later ask for the bare base (the server's chat
  path): PEFT unmerges by editing float weights, which int8 projections no longer hold.

bf16 merges too. Merged bf16 weights round differently from base + adapter, but against an fp32
reference both bf16 paths drift alike (moderation model: max |score change| 0.019 merged, 0.036
unmerged, same labels). When the server's chat path unmerges in bf16, a few percent of the base
weights come back off by a rounding step of the merged value; measured on the embedded Gemma
(``benchmarks/merge_drift.py``, docs/serving.md): 2.8% of the projection weights changed, the
greedy chat replies identical to a never-merged base's, scores within 0.01, labels unchanged.
The server used to merge only fp32 bases, so its default bf16 guards paid for the adapter's
extra matmuls on every projection.
"""

from __future__ import annotations

from guardtune.backbone import Backbone
from guardtune.methods.lora import activate, merge_for_inference
from guardtune.precision import quantize_projections, upcast_float_parts


def should_merge(backbone: Backbone, *, sole_adapter: bool, bare_base_needed: bool) -> bool:
    """Whether to fold the adapter into ``backbone`` (see the module docstring for why).

    Args:
        backbone: the loaded base, with its adapter on.
        sole_adapter: no other adapter runs on this base, now or later.
        bare_base_needed: something will run the base with adapters off (the chat path).
    """
    if not sole_adapter or backbone.quantize is not None:
        return False
    return not (backbone.int8 and bare_base_needed)


def prepare_for_inference(
    backbone: Backbone, merge_adapter: str | None, int8: bool, float_copies: bool = False
) -> None:
    """Fold ``merge_adapter`` into the base (None: adapters stay apart), then, with ``int8``,
    quantise the decoder's projections (with ``float_copies``, keeping their float layers too,
    for messages re-scored in float: ``--int8-recheck``).

    Both at once merge each projection just before it is quantised, so only one projection's
    merged float weights are resident at a time: merging all of them first held the whole
    decoder's merged bf16 weights beside their int8 copies (about 100 MB more peak on Gemma 3
    270M).
    """
    if int8:
        if merge_adapter is not None:
            activate(backbone.peft_model, merge_adapter)
        quantize_projections(backbone.model, merge_adapter=merge_adapter, float_copies=float_copies)
        # A bf16 base loaded for int8 on an fp32 CPU: the rest now becomes fp32 (no-op elsewhere).
        upcast_float_parts(backbone.model, backbone.dtype)
    elif merge_adapter is not None:
        merge_for_inference(backbone, merge_adapter)
