"""The method registry: each method file registers its class; the CLI, exports and benchmarks read
this table and keep no list of their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from guardtune.errors import GuardtuneError

if TYPE_CHECKING:
    from guardtune.methods.base import LoraMethod

M = TypeVar("M", bound="type[LoraMethod]")
_METHODS: dict[str, type[LoraMethod]] = {}
# What `guardtune train` and `guardtune.api.train` use when no method is named.
DEFAULT_METHOD = "head"


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator adding a method under ``name`` (also set as the class's ``name``).

    Raises:
        ValueError: ``name`` is taken, or the class states no ``info`` for the shells.
    """

    def add(cls: M) -> M:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name]!r}")
        if "info" not in vars(cls):
            raise ValueError(f"method {name!r}: {cls.__name__} needs its own `info = MethodInfo(...)`")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def get_method(name: str, where: str = "--method") -> type[LoraMethod]:
    """The method class registered under ``name``; ``where`` names the source in the error
    (the option, or a model's ``guardtune.json``)."""
    if name not in _METHODS:
        raise GuardtuneError(
            f"{where}: unknown method {name!r} (available: {', '.join(available_methods())})"
        )
    return _METHODS[name]


def available_methods() -> list[str]:
    """Registered method names in registration order (the built-ins simplest first, as
    ``guardtune.methods`` imports them): the order of ``guardtune compare`` and the benchmarks."""
    return list(_METHODS)
