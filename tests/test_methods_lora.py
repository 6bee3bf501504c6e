"""LoRA settings on a backbone: chosen target modules, and a wrong name listed with what exists."""

import pytest

from guardtune.backbone import load_backbone
from guardtune.errors import GuardtuneError
from guardtune.methods import LoraSettings


def test_chosen_lora_targets_adapt_only_those_layers_and_a_wrong_name_is_listed(tiny_base: str) -> None:
    from peft.tuners.lora import LoraLayer

    from guardtune.methods.lora import apply_lora

    backbone = load_backbone(tiny_base, dtype="fp32")
    apply_lora(backbone, LoraSettings(r=2, target_modules=["q_proj", "v_proj"]))
    assert backbone.peft_model is not None
    adapted = {
        name.rsplit(".", 1)[-1]
        for name, module in backbone.peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }
    assert adapted == {"q_proj", "v_proj"}
    # A chosen list must match in full: a typo names itself and what the model has.
    backbone = load_backbone(tiny_base, dtype="fp32")
    with pytest.raises(GuardtuneError, match=r"\['q_prj'\] not found in .*its Linear layers are: .*q_proj"):
        apply_lora(backbone, LoraSettings(r=2, target_modules=["q_prj", "v_proj"]))
