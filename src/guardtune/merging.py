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
unmerged, same labels), and when the chat path unmerges, the restored base differs from the
original by at most one bf16 rounding step per weight (measured in ``docs/serving.md``).
"""

from __future__ import annotations

from guardtune.backbone import Backbone


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
