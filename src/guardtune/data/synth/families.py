"""Template families: one YAML file per task and family, read and checked once.

A family file sits in ``templates/<task>/<family>.yaml``. Its ``rows`` give the family's share of
the generated rows per class (relative weights, summed over every family of the task), ``train`` and
``check`` its two disjoint template pools. For a single-label task the classes are the task's labels;
for a multi-label task they are the groups ``safe`` (no category), ``one`` and ``multi``, drawn from
``safe`` clauses, one pool per category, ``multi`` frames and optional ``frames`` that wrap a whole
message (an e-mail, a ticket) around the clauses. See ``docs/data.md`` for the format.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from faker.config import AVAILABLE_LOCALES
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from guardtune.data.synth.fillers import FIELD_CATEGORY, PERSONAL_FIELDS, fillers
from guardtune.data.synth.style import Register, chat_filler_words
from guardtune.errors import GuardtuneError
from guardtune.task import load_task

SPLITS: tuple[str, ...] = ("train", "check")
_Schema = TypeVar("_Schema", bound=BaseModel)
MULTI_GROUPS: tuple[str, ...] = ("safe", "one", "multi")
_FORMATTER = string.Formatter()
_PLACEHOLDER = re.compile(r"\{[a-z_0-9]+\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class _TaskRules(BaseModel):
    """``<task>/_task.yaml``: rules every family file of the task is checked against."""

    model_config = ConfigDict(extra="forbid")

    needs_personal: list[str] = Field(default_factory=list)  # classes whose templates give a value
    forbids_personal: list[str] = Field(default_factory=list)  # classes whose templates may give none


class _FamilyFile(BaseModel):
    """The schema of a family file; cross-field rules that need the task are checked after it."""

    model_config = ConfigDict(extra="forbid")

    family: str
    description: str = Field(min_length=1)
    style: list[Register] = Field(default=["chat"], min_length=1)
    locales: list[str] = Field(default_factory=lambda: ["en_US"], min_length=1)
    unique: bool = True
    rows: dict[str, float] = Field(min_length=1)
    context: float = Field(default=0.0, ge=0.0, le=1.0)
    context_from: str | None = None
    connectors: list[str] = Field(default_factory=lambda: [". ", ", ", " and ", " - "], min_length=1)
    train: dict[str, list[str]]
    check: dict[str, list[str]]

    @field_validator("style", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("locales")
    @classmethod
    def _known_locale(cls, value: list[str]) -> list[str]:
        for locale in value:
            if locale not in AVAILABLE_LOCALES:
                raise ValueError(f"unknown Faker locale {locale!r}")
        return value

    @field_validator("rows")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for key, share in value.items():
            if share < 0:
                raise ValueError(f"{key}: expected a share >= 0, found {share}")
        if sum(value.values()) <= 0:
            raise ValueError("expected at least one share above 0")
        return value


@dataclass(frozen=True)
class Family:
    """One checked family file of a task."""

    task: str
    name: str
    description: str
    styles: tuple[str, ...]
    locales: tuple[str, ...]
    unique: bool
    rows: dict[str, float]
    context: float
    # Single-label tasks: the family whose train ``none`` pool supplies the context lines (None:
    # the family's own).
    context_from: str | None
    connectors: tuple[str, ...]
    pools: dict[str, dict[str, tuple[str, ...]]]  # split -> class or pool name -> templates
    source: str


def parse_template(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    """``(literal, field, format spec, conversion)`` runs of ``template``, as ``str.format`` reads it."""
    return list(_FORMATTER.parse(template))


def field_root(field: str) -> str:
    """The filler a placeholder names: ``char2`` is a second, independent ``char``."""
    return field.rstrip("0123456789")


def template_fields(template: str) -> list[str]:
    """Placeholder names in ``template`` with any numeric suffix removed (``char2`` -> ``char``)."""
    return [field_root(field) for _, field, _, _ in parse_template(template) if field]


def template_frame(template: str) -> str:
    """``template`` with every placeholder blanked: two templates with one frame are one phrasing."""
    return _PLACEHOLDER.sub("{}", template.lower())


def _templates_root() -> Traversable:
    return resources.files("guardtune.data.synth").joinpath("templates")


@cache
def synth_tasks(root: Path | None = None) -> tuple[str, ...]:
    """Tasks with a template folder under ``root`` (default: the built-in templates), in name order."""
    folder = root if root is not None else _templates_root()
    if root is not None and not root.is_dir():
        raise GuardtuneError(f"{root}: expected a folder of <task>/<family>.yaml template files")
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and _is_task(p.name)))


def _is_task(name: str) -> bool:
    # A template folder is only a task's when a built-in task of that name exists.
    try:
        load_task(name)
    except GuardtuneError:
        return False
    return True


def check_task(task: str, root: Path | None = None) -> None:
    known = synth_tasks(root)
    if task not in known:
        where = f" in {root}" if root is not None else ""
        raise GuardtuneError(f"task: {task!r} has no synthetic generator{where} (known: {', '.join(known)})")


@cache
def load_families(task: str, root: Path | None = None) -> dict[str, Family]:
    """Every family of ``task``, in file-name order, checked; also checks the families together.

    Args:
        task: a task with a template folder.
        root: a folder holding ``<task>/<family>.yaml`` files to use instead of the built-in ones.

    Raises:
        GuardtuneError: unknown task; a file that does not parse, breaks the schema, names an unknown
            placeholder or class, lacks a pool its shares need, or shares a phrasing across splits.
    """
    check_task(task, root)
    folder = (root if root is not None else _templates_root()).joinpath(task)
    prefix = str(root / task) if root is not None else f"guardtune/data/synth/templates/{task}"
    rules = _read_rules(folder.joinpath("_task.yaml"), f"{prefix}/_task.yaml")
    files = sorted(
        (p for p in folder.iterdir() if p.name.endswith((".yaml", ".yml")) and not p.name.startswith("_")),
        key=lambda p: p.name,
    )
    families = {}
    for path in files:
        family = _read_family(task, path, f"{prefix}/{path.name}", rules)
        families[family.name] = family
    if not families:
        raise GuardtuneError(f"{prefix}: no family files (*.yaml)")
    _check_context_sources(task, families)
    _check_splits_disjoint(families)
    return families


def _read_yaml(path: Traversable, where: str) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise GuardtuneError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise GuardtuneError(f"{where}: {line}not valid YAML ({getattr(exc, 'problem', exc)})") from None


def _validated(model: type[_Schema], raw: Any, where: str) -> _Schema:
    if not isinstance(raw, dict):
        raise GuardtuneError(f"{where}: expected a mapping of {', '.join(model.model_fields)}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise GuardtuneError(f"{where}: {key}: {first['msg']}{more}") from None


def _read_rules(path: Traversable, where: str) -> _TaskRules:
    if not path.is_file():
        return _TaskRules()
    return _validated(_TaskRules, _read_yaml(path, where) or {}, where)


def _read_family(task: str, path: Traversable, where: str, rules: _TaskRules) -> Family:
    spec = _validated(_FamilyFile, _read_yaml(path, where), where)
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    if spec.family != stem or not _NAME.match(spec.family):
        raise GuardtuneError(
            f"{where}: family: expected {stem!r} (the file's name; lower-case letters, digits and '-'), "
            f"found {spec.family!r}"
        )
    pools = {"train": spec.train, "check": spec.check}
    _check_classes(task, spec, pools, where)
    for split, by_class in pools.items():
        for cls, templates in by_class.items():
            for i, template in enumerate(templates):
                _check_template(task, cls, template, f"{where}: {split}.{cls}[{i}]", rules)
    return Family(
        task=task,
        name=spec.family,
        description=" ".join(spec.description.split()),
        styles=tuple(spec.style),
        locales=tuple(spec.locales),
        unique=spec.unique,
        rows=dict(spec.rows),
        context=spec.context,
        context_from=spec.context_from,
        connectors=tuple(spec.connectors),
        pools={split: {k: tuple(v) for k, v in by_class.items()} for split, by_class in pools.items()},
        source=where,
    )


def _check_classes(task: str, spec: _FamilyFile, pools: dict[str, dict[str, list[str]]], where: str) -> None:
    task_spec = load_task(task)
    if task_spec.mode == "single":
        classes = list(task_spec.label_names)
        pool_names = classes
    else:
        classes = list(MULTI_GROUPS)
        pool_names = ["safe", *task_spec.label_names, "multi", "frames"]
    for key in spec.rows:
        if key not in classes:
            raise GuardtuneError(
                f"{where}: rows.{key}: unknown class (expected one of: {', '.join(classes)})"
            )
    for split, by_class in pools.items():
        for key, templates in by_class.items():
            if key not in pool_names:
                raise GuardtuneError(
                    f"{where}: {split}.{key}: unknown pool (expected one of: {', '.join(pool_names)})"
                )
            if not templates:
                raise GuardtuneError(f"{where}: {split}.{key}: expected at least one template")
        for key in _needed_pools(task_spec.mode, spec, task_spec.label_names):
            if key not in by_class:
                raise GuardtuneError(f"{where}: {split}.{key}: missing; rows give this family's share to it")


def _needed_pools(mode: str, spec: _FamilyFile, categories: list[str]) -> list[str]:
    wanted = [cls for cls, share in spec.rows.items() if share > 0]
    if mode == "single":
        return wanted
    needed = []
    if "safe" in wanted or spec.context > 0:
        needed.append("safe")
    if "one" in wanted or "multi" in wanted:
        needed += categories
    return needed


def _check_template(task: str, cls: str, template: str, where: str, rules: _TaskRules) -> None:
    try:
        parsed = parse_template(template)
    except ValueError as exc:
        raise GuardtuneError(f"{where}: {template!r}: not a valid template ({exc})") from None
    known = fillers()
    for _, field, spec, conv in parsed:
        if field is None:
            continue
        root = field_root(field)
        if field == "body" and cls == "frames":
            continue
        if not root or spec or conv or root not in known:
            raise GuardtuneError(f"{where}: {template!r}: unknown placeholder {{{field}}}")
    fields = set(template_fields(template))
    personal = fields & PERSONAL_FIELDS
    if cls in rules.needs_personal and not personal:
        raise GuardtuneError(
            f"{where}: {template!r}: missing placeholder: a {cls!r} template needs a personal value "
            f"(one of: {', '.join(sorted(PERSONAL_FIELDS))})"
        )
    if cls in rules.forbids_personal and personal:
        raise GuardtuneError(
            f"{where}: {template!r}: a {cls!r} template cannot hold a personal value "
            f"({', '.join('{' + f + '}' for f in sorted(personal))})"
        )
    if load_task(task).mode == "multi":
        _check_category_template(cls, template, fields, where)


def _check_category_template(cls: str, template: str, fields: set[str], where: str) -> None:
    codes = {FIELD_CATEGORY[f] for f in fields if f in FIELD_CATEGORY}
    if cls == "frames":
        if template_fields(template).count("body") != 1 or codes:
            raise GuardtuneError(
                f"{where}: {template!r}: a frame needs exactly one {{body}} and no category placeholder"
            )
    elif cls == "safe" and codes:
        raise GuardtuneError(f"{where}: {template!r}: a safe clause holds category values {sorted(codes)}")
    elif cls == "multi" and len(codes) < 2:
        raise GuardtuneError(f"{where}: {template!r}: missing placeholder: a multi frame needs 2+ categories")
    elif cls not in ("safe", "multi", "frames") and codes != {cls}:
        raise GuardtuneError(
            f"{where}: {template!r}: missing placeholder: a {cls} clause needs {cls} values and no others "
            f"(found {sorted(codes) or 'none'})"
        )


def phrasing_key(template: str) -> str:
    """What makes two templates one phrasing: the words, with values, case, punctuation and the
    chat register's filler words at either end ignored (``"Tel: {phone}"`` is ``"tel. {phone}"``)."""
    words = re.findall(r"[a-z0-9]+|\{\}", template_frame(template))
    # Words the chat register may add at either end of a message do not make a new phrasing.
    filler = chat_filler_words()
    while words and words[0] in filler:
        words.pop(0)
    while words and words[-1] in filler:
        words.pop()
    # A message of emoji or punctuation alone has no words; the symbols are its phrasing.
    return " ".join(words) or template.strip()


def _check_context_sources(task: str, families: dict[str, Family]) -> None:
    single = load_task(task).mode == "single"
    for family in families.values():
        if not single:
            if family.context_from is not None:
                # Multi-label context is the family's own ``safe`` clauses.
                raise GuardtuneError(f"{family.source}: context_from: only single-label tasks take it")
            continue
        if family.context_from is None and family.context == 0:
            continue
        name = family.context_from or family.name
        source = families.get(name)
        if source is None or "none" not in source.pools["train"]:
            sources = ", ".join(n for n, f in families.items() if "none" in f.pools["train"])
            found = repr(name) if family.context_from else f"unset (the family itself, {name!r})"
            raise GuardtuneError(
                f"{family.source}: context_from: expected a family of {task} with a train.none pool "
                f"({sources}), found {found}"
            )


def _check_splits_disjoint(families: dict[str, Family]) -> None:
    # Check rows must test phrasings never trained on, across every family of the task.
    trained: dict[str, str] = {}
    for family in families.values():
        for cls, templates in family.pools["train"].items():
            for i, template in enumerate(templates):
                trained.setdefault(phrasing_key(template), f"{family.source}: train.{cls}[{i}]")
    for family in families.values():
        for cls, templates in family.pools["check"].items():
            for i, template in enumerate(templates):
                if phrasing_key(template) in trained:
                    raise GuardtuneError(
                        f"{family.source}: check.{cls}[{i}]: {template!r} has the phrasing of "
                        f"{trained[phrasing_key(template)]}"
                    )
