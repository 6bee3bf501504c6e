"""Pydantic validation errors as guardtune's one-line errors: ``FILE: key: expected X, found Y``.

The file schemas (task YAML, ``guardtune.json``, ``calibration.json``) are pydantic models; this
module renders every problem pydantic finds in the house form, all of them in one line.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import cache
from typing import Annotated, Any, TypeVar, cast

from pydantic import AfterValidator, Strict, TypeAdapter, ValidationError, WithJsonSchema
from pydantic_core import ErrorDetails, PydanticCustomError

from guardtune.errors import GuardtuneError

Model = TypeVar("Model")

# What each pydantic error type expected, in words (the rest keep pydantic's own message).
_EXPECTED = {
    "string_type": "a string",
    "string_too_short": "a non-empty string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "too_short": "at least one item",
}


def shown(value: Any, limit: int = 60) -> str:
    """A found value as an error shows it: its repr, cut short, or its type for a container."""
    if isinstance(value, dict | list | tuple):
        return "a list" if isinstance(value, list | tuple) else "a mapping"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def problem(error: ErrorDetails, quoted: bool = False) -> str:
    """One pydantic error as ``key: expected X, found Y`` (``unknown key 'k'`` for extra keys).

    Args:
        quoted: name the key as ``key 'a.b'`` (the model files' form) rather than ``a.b``.
    """
    path = ".".join(str(part) for part in error["loc"])
    if quoted and path:
        path = f"key {path!r}"
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = ".".join(str(part) for part in error["loc"][:-1])
        unknown = f"unknown key {error['loc'][-1]!r}"
        return f"{parent}: {unknown}" if parent else unknown
    if kind == "missing":
        return f"{path}: missing"
    if kind == "literal_error":
        expected = str((error.get("ctx") or {}).get("expected", ""))
        return f"{path}: expected {expected}, found {shown(error['input'])}"
    if kind in _EXPECTED:
        return f"{path}: expected {_EXPECTED[kind]}, found {shown(error['input'])}"
    message = error["msg"].removeprefix("Value error, ")
    scalar = not isinstance(error["input"], dict | list)
    if kind == "guardtune" and message.startswith("expected") and "found" not in message and scalar:
        message += f", found {shown(error['input'])}"
    return f"{path}: {message}" if path else message


def problems(exc: ValidationError, quoted: bool = False) -> list[str]:
    """Every problem in ``exc``, one string each, in the order pydantic found them."""
    return [problem(error, quoted) for error in exc.errors()]


def check(condition: bool, message: str) -> None:
    """Raise a validation error with ``message`` as it is (for a custom rule) unless ``condition``."""
    if not condition:
        raise PydanticCustomError("guardtune", message)


def parse(
    model: type[Model],
    raw: Any,
    source: str,
    extra: list[str] | None = None,
    context: dict[str, Any] | None = None,
    quoted: bool = False,
) -> Model:
    """``raw`` validated as ``model``, or one ``GuardtuneError`` naming ``source`` and every problem.

    Args:
        extra: problems found outside the model (rules across fields), reported with its own.
        context: passed to the model's validators.
        quoted: name keys as ``key 'a.b'``.
    """
    found = list(extra or [])
    try:
        result: Model = _adapter(cast(Hashable, model)).validate_python(raw, context=context)
    except ValidationError as exc:
        found = problems(exc, quoted) + found
    if found:
        raise GuardtuneError(f"{source}: " + "; ".join(dict.fromkeys(found)))
    return result


@cache
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def json_schema(model: Any) -> dict[str, Any]:
    """The JSON Schema of a file model (a pydantic model or dataclass)."""
    return _adapter(model).json_schema()


def _unit(value: float) -> float:
    check(0.0 <= value <= 1.0, "expected a number in [0, 1]")
    return value


def _one_of(values: tuple[str, ...]) -> Any:
    def inside(value: str) -> str:
        check(value in values, f"expected one of {', '.join(values)}")
        return value

    return inside


# A probability, threshold or rate.
Unit = Annotated[
    float, Strict(), AfterValidator(_unit), WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1})
]


def one_of(values: tuple[str, ...]) -> Any:
    """A string among ``values``, whose error lists them as ``expected one of a, b, c``."""
    return Annotated[str, Strict(), AfterValidator(_one_of(values)), WithJsonSchema({"enum": list(values)})]
