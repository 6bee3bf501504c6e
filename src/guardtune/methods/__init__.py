"""Ways of turning a decoder-only LM into a classifier; one file each, registered by name."""

from guardtune.methods import generate as _generate  # noqa: F401  (registers "generate")
from guardtune.methods import head as _head  # noqa: F401  (registers "head")
from guardtune.methods import label_tokens as _label_tokens  # noqa: F401  (registers "label-tokens")
from guardtune.methods.lora import LoraSettings
from guardtune.methods.registry import available_methods, get_method, register_method

__all__ = ["LoraSettings", "available_methods", "get_method", "register_method"]
