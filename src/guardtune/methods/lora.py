"""LoRA settings and how they are put on a backbone (shared by every method)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from guardtune.backbone import Backbone
from guardtune.errors import GuardtuneError

# Attention and MLP projections in Llama-style decoders (Gemma, Llama, Qwen, Mistral, Phi-3).
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    """LoRA hyper-parameters; ``target_modules`` are matched against module-name suffixes."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self) -> None:
        problems = []
        if self.r < 1:
            problems.append(f"lora r: expected a positive integer, found {self.r}")
        if self.alpha <= 0:
            problems.append(f"lora alpha: expected a positive number, found {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"lora dropout: expected a number in [0, 1), found {self.dropout}")
        if problems:
            raise GuardtuneError("; ".join(problems))


def linear_module_suffixes(model: nn.Module) -> list[str]:
    """Distinct last name parts of the Linear layers of a model (what LoRA can target)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def apply_lora(backbone: Backbone, settings: LoraSettings) -> PeftModel:
    """Wrap the backbone's causal LM in a PEFT LoRA model (the base weights stay frozen)."""
    present = set(linear_module_suffixes(backbone.model))
    targets = [t for t in settings.target_modules if t in present]
    if not targets:
        raise GuardtuneError(
            f"LoRA target modules {settings.target_modules} not found in {backbone.base}; "
            f"its Linear layers are: {', '.join(sorted(present))}"
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
    )
    return get_peft_model(backbone.model, config)
