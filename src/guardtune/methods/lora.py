"""LoRA settings and how they are put on a backbone (shared by every method)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

from guardtune.backbone import Backbone
from guardtune.errors import GuardtuneError, one_line
from guardtune.modeldir import read_json_object, tensor_shapes

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Attention and MLP projections of Llama-style decoders (Gemma, Llama, Qwen, Mistral), plus Phi-3's
# fused ``qkv_proj`` and ``gate_up_proj``: without those, LoRA on Phi-3 reached only o_proj and down_proj.
DEFAULT_TARGETS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "gate_up_proj",
    "down_proj",
]


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
    """Distinct last name parts of the Linear layers of a model (what LoRA can target).

    Layers already wrapped by an earlier adapter count under their own names, not their parts'.
    """
    names = set()
    for name, module in model.named_modules():
        inside_lora = any(part in name.split(".") for part in ("base_layer", "lora_A", "lora_B"))
        if isinstance(module, LoraLayer) or (isinstance(module, nn.Linear) and not inside_lora):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _free_adapter_name(backbone: Backbone, wanted: str | None) -> str:
    taken = set(backbone.peft_model.peft_config) if backbone.peft_model is not None else set()
    if wanted is not None:
        if wanted in taken:
            raise GuardtuneError(f"adapter name {wanted!r} is already loaded on {backbone.base}")
        return wanted
    if "default" not in taken:
        return "default"
    return next(f"adapter-{i}" for i in range(1, len(taken) + 2) if f"adapter-{i}" not in taken)


def apply_lora(backbone: Backbone, settings: LoraSettings, adapter_name: str | None = None) -> str:
    """Add a new trainable LoRA adapter to the backbone (its base weights stay frozen).

    Returns:
        The adapter's name on ``backbone.peft_model``.
    """
    present = set(linear_module_suffixes(backbone.model))
    targets = [t for t in settings.target_modules if t in present]
    # The default list names every Llama-style projection and adapts those a model has; a list
    # someone chose must match in full, or a typo would silently train fewer layers.
    missing = [t for t in settings.target_modules if t not in present]
    if missing and settings.target_modules != DEFAULT_TARGETS:
        raise GuardtuneError(
            f"LoRA target modules {missing} not found in {backbone.base}; "
            f"its Linear layers are: {', '.join(sorted(present))}"
        )
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
    name = _free_adapter_name(backbone, adapter_name)
    if backbone.peft_model is None:
        backbone.peft_model = get_peft_model(backbone.model, config, adapter_name=name)
    else:
        backbone.peft_model.add_adapter(name, config)
    backbone.peft_model.set_adapter(name, inference_mode=False)
    return name


def load_lora(backbone: Backbone, directory: Path, adapter_name: str | None = None) -> str:
    """Load a saved LoRA adapter onto the backbone, for inference; returns its name.

    Raises:
        GuardtuneError: ``adapter_config.json`` or ``adapter_model.safetensors`` missing, cut
            short, not a LoRA adapter, or not fitting the base (one line, naming the file).
    """
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    raw = read_json_object(config_path)
    if raw.get("peft_type") != "LORA":
        found = raw.get("peft_type")
        raise GuardtuneError(f"{config_path}: key 'peft_type': expected 'LORA', found {found!r}")
    problems = [
        f"key {key!r}: expected {expected}, found {raw.get(key)!r}"
        for key, expected, ok in (
            ("r", "a positive integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0),
            ("lora_alpha", "a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
            ("target_modules", "a list of module names", lambda v: isinstance(v, list | str)),
        )
        if not ok(raw.get(key))
    ]
    if problems:
        raise GuardtuneError(f"{config_path}: " + "; ".join(problems))
    try:
        LoraConfig.from_pretrained(str(directory))
    except Exception as exc:  # PEFT raises TypeError / ValueError for bad values
        raise GuardtuneError(f"{config_path}: not a valid LoRA config ({one_line(exc)})") from exc
    shapes = tensor_shapes(weights_path)  # a file cut short fails here, before PEFT reads it
    name = _free_adapter_name(backbone, adapter_name)
    try:
        if backbone.peft_model is None:
            backbone.peft_model = PeftModel.from_pretrained(
                backbone.model, str(directory), adapter_name=name, is_trainable=False
            )
        else:
            backbone.peft_model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
    except Exception as exc:  # size mismatches and the like, from torch's load_state_dict
        reason = one_line(exc)
        raise GuardtuneError(f"{weights_path}: does not fit the base {backbone.base} ({reason})") from exc
    # PEFT loads with strict=False: tensors the file lacks would silently stay at their initial values.
    layers = [m for m in backbone.peft_model.modules() if isinstance(m, LoraLayer) and name in m.lora_A]
    expected = 2 * len(layers)
    if len(shapes) != expected:
        backbone.peft_model.delete_adapter(name)
        raise GuardtuneError(
            f"{weights_path}: holds {len(shapes)} tensors, expected {expected} "
            f"(lora_A and lora_B for each target module in {ADAPTER_CONFIG})"
        )
    backbone.peft_model.eval()
    return name


def merge_for_inference(backbone: Backbone, adapter_name: str) -> None:
    """Fold ``adapter_name`` into the base weights, so inference runs the plain base layers.

    Each LoRA layer otherwise adds two small matmuls and dtype casts per projection: on a CPU
    that is about 40% of a single message's forward pass. Only for a backbone that serves one
    adapter: PEFT unmerges on its own (once) if another adapter or the bare base is asked for.
    """
    peft_model = backbone.peft_model
    activate(peft_model, adapter_name)
    peft_model.merge_adapter([adapter_name])


def activate(peft_model: PeftModel, adapter_name: str, training: bool = False) -> None:
    """Make ``adapter_name`` the one that runs (a no-op when it already is)."""
    if peft_model.active_adapter != adapter_name:
        peft_model.set_adapter(adapter_name, inference_mode=not training)


def save_lora(peft_model: PeftModel, adapter_name: str, directory: Path, base: str) -> None:
    """Write one adapter as a plain PEFT adapter directory (loadable with ``PeftModel``)."""
    config = copy.deepcopy(peft_model.peft_config[adapter_name])
    config.base_model_name_or_path = base
    config.inference_mode = True
    # The base's embeddings are frozen, so there is nothing of them to save.
    state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name, save_embedding_layers=False)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config.save_pretrained(str(directory))
