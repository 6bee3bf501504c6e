"""The method registry: each method file registers itself; the CLI and docs read this table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from guardtune.errors import GuardtuneError

T = TypeVar("T")
_METHODS: dict[str, Any] = {}


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator adding a method under ``name``; a second class with the same name fails."""

    def add(cls: T) -> T:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name]!r}")
        _METHODS[name] = cls
        return cls

    return add


def get_method(name: str, where: str = "--method") -> Any:
    """The method class registered under ``name``; ``where`` names the source in the error
    (the option, or a model's ``guardtune.json``)."""
    if name not in _METHODS:
        raise GuardtuneError(
            f"{where}: unknown method {name!r} (available: {', '.join(available_methods())})"
        )
    return _METHODS[name]


def available_methods() -> list[str]:
    return sorted(_METHODS)
