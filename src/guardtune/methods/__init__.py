"""Ways of turning a decoder-only LM into a classifier; one file each, registered by name."""

# The built-ins register on import, in the order the registry lists them: simplest first.
# isort: off
from guardtune.methods import head as _head  # noqa: F401  (registers "head")
from guardtune.methods import label_tokens as _label_tokens  # noqa: F401  (registers "label-tokens")
from guardtune.methods import generate as _generate  # noqa: F401  (registers "generate")

# isort: on
from guardtune.methods.base import LoraMethod, MethodInfo, PromptMethod
from guardtune.methods.lora import LoraSettings
from guardtune.methods.registry import DEFAULT_METHOD, available_methods, get_method, register_method

__all__ = [
    "DEFAULT_METHOD",
    "LoraMethod",
    "LoraSettings",
    "MethodInfo",
    "PromptMethod",
    "available_methods",
    "get_method",
    "register_method",
]
