"""Task specs: what is classified (labels, mode, text fields) and how scores become labels (policy).

A task is YAML. Built-in tasks live beside this module in ``tasks/<name>.yaml`` and are found by
name; any other path to a YAML file works the same way.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from guardtune.errors import GuardtuneError
from guardtune.validation import Unit, check, parse

Mode = Literal["single", "multi"]
LongText = Literal["head-tail", "windows"]
LONG_TEXT_MODES: tuple[str, ...] = ("head-tail", "windows")
_SCHEMA = ConfigDict(frozen=True, extra="forbid", strict=True)


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


class Policy(BaseModel):
    """How per-label scores become a decision.

    Single-label: labels in ``thresholds`` are checked in the order given and the first whose score
    reaches its threshold wins; otherwise the most likely label if its score reaches
    ``min_confidence``; otherwise ``fallback``. Multi-label: a label is on when its score reaches
    its threshold (0.5 unless set).
    """

    model_config = _SCHEMA

    thresholds: Annotated[dict[str, Unit], BeforeValidator(_none_is_empty)] = Field(
        default_factory=dict,
        description="Label -> the score in [0, 1] at which it is decided (single-label: checked in order).",
    )
    min_confidence: Unit = Field(
        default=0.0, description="Single-label: the most likely label needs this score, else the fallback."
    )
    fallback: str | None = Field(
        default=None, description="Single-label: the label given when nothing else is."
    )


def _labels(value: Any) -> Any:
    """Label names as strings and empty descriptions as ``""`` (YAML reads ``none:`` as null)."""
    if isinstance(value, list):
        check(False, "expected a mapping of label name to description, found a list")
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    return value


class TaskSpec(BaseModel):
    """A validated classification task: what is classified and how scores become labels.

    Args:
        name: short identifier, used in reports and model cards.
        mode: ``single`` (one label per row) or ``multi`` (any subset of labels per row).
        labels: label name -> description, in the order scores are reported.
        text_fields: columns joined (with newlines) into the text that is classified.
        label_column: column that holds the gold label; for ``multi`` a comma-separated list,
            where an empty cell means the negative outcome.
        instruction: optional task instruction for prompt-based methods.
        template: optional prompt for prompt-based methods, with ``{text}`` where the message goes
            and optionally ``{instruction}``, ``{labels}`` and ``{categories}``.
        policy: decision policy applied by predict, eval and serve.
        negative_label: name of the "nothing flagged" outcome of a multi-label task.
        overall: for a multi-label guard, the label that is the overall decision (``unsafe``);
            the other labels are then harm categories, which only count when it is on. Its gold
            value comes from ``label_column`` (``safe`` / ``unsafe``), categories from
            ``category_column``; an ``unsafe`` row that names no category leaves the categories
            unknown (masked out of the loss and of per-category metrics).
        category_column: column of comma-separated category names (``overall`` tasks only).
        long_text: how a text longer than the model's max length is read: ``head-tail`` keeps
            its beginning and end; ``windows`` scores overlapping windows and keeps the most
            flagged one.
    """

    model_config = _SCHEMA

    name: str = Field(min_length=1, description="Short identifier, used in reports and model cards.")
    mode: Mode = Field(
        default="single", description="single: one label per row; multi: any subset of labels."
    )
    labels: Annotated[
        dict[str, str], BeforeValidator(_labels, json_schema_input_type=dict[str, str | None])
    ] = Field(description="Label name -> description, in the order scores are reported.")
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"], description="Columns joined (with newlines) into the text."
    )
    label_column: str = Field(
        default="label", description="Column of the gold label (multi: comma-separated; default labels)."
    )
    instruction: str | None = Field(default=None, description="Task instruction for prompt-based methods.")
    template: str | None = Field(
        default=None, description="Prompt with {text} once; may use {instruction}, {labels}, {categories}."
    )
    policy: Annotated[Policy, BeforeValidator(_none_is_empty)] = Field(
        default_factory=lambda: Policy(), description="How scores become labels."
    )
    negative_label: str = Field(default="safe", description='The "nothing flagged" outcome.')
    overall: str | None = Field(
        default=None, description="Multi-label guards: the label that is the overall decision."
    )
    category_column: str = Field(
        default="categories", description="Column of comma-separated categories (overall only)."
    )
    long_text: LongText = Field(default="head-tail", description="How a text over the max length is read.")

    @model_validator(mode="before")
    @classmethod
    def _label_column_follows_mode(cls, raw: Any) -> Any:
        # An absent (or empty) label_column is "labels" for a multi-label task, "label" otherwise.
        if isinstance(raw, dict) and raw.get("label_column", "") == "":
            return {**raw, "label_column": "labels" if raw.get("mode") == "multi" else "label"}
        return raw

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        check(bool(value), "expected a non-empty mapping of label name to description")
        bad = [n for n in value if "," in n or not n.strip()]
        check(not bad, f"names must be non-empty and contain no comma: {bad}")
        return value

    @field_validator("text_fields")
    @classmethod
    def _some_fields(cls, value: list[str]) -> list[str]:
        check(bool(value), "expected a non-empty list of column names")
        return value

    @field_validator("template")
    @classmethod
    def _one_text_slot(cls, value: str | None) -> str | None:
        check(value is None or value.count("{text}") == 1, "expected a string with {text} exactly once")
        return value

    @model_validator(mode="after")
    def _rules_across_fields(self, info: ValidationInfo) -> TaskSpec:
        # task_from_dict checks the raw mapping itself; a TaskSpec built in code is checked here,
        # its defaults (category_column among them) not counting as written keys.
        if not (info.context or {}).get("rules_checked"):
            found = rules_across_fields(self.model_dump(exclude_defaults=True))
            check(not found, "; ".join(found))
        return self

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)

    @property
    def categories(self) -> list[str]:
        """Harm categories of an ``overall`` task (every label but the overall one)."""
        return [n for n in self.labels if n != self.overall] if self.overall else []

    def known_mask(self, labels: list[Any]) -> np.ndarray:
        """``(rows, labels)`` 1.0 where the gold value of a label is known, from gold label sets.

        Only ``overall`` tasks have unknowns: an unsafe row naming no category says nothing
        about the categories. A safe row is known negative for every category.
        """
        mask = np.ones((len(labels), len(self.labels)), dtype=np.float32)
        if self.overall is None or self.mode != "multi":
            return mask
        category_columns = [i for i, n in enumerate(self.labels) if n != self.overall]
        for row, active in enumerate(labels):
            if self.overall in active and len(active) == 1:
                mask[row, category_columns] = 0.0
        return mask

    @property
    def negative_outcome(self) -> str | None:
        """The "nothing to flag" label of a single-label task (``None`` for multi-label tasks).

        ``negative_label`` when it is one of the labels (``safe``), else the policy's fallback,
        else the first label (``none`` for pii-intent).
        """
        if self.mode == "multi":
            return None
        if self.negative_label in self.labels:
            return self.negative_label
        return self.policy.fallback or self.label_names[0]

    @property
    def flag_labels(self) -> list[str]:
        """The labels that flag a text (a moderation response's categories): every label but the
        negative outcome; for an ``overall`` task, its harm categories."""
        if self.overall is not None:
            return self.categories
        return [name for name in self.labels if name != self.negative_outcome]

    def decide_flags(self, scores: np.ndarray) -> list[tuple[Any, list[str]]]:
        """Apply the policy; per row the decided label(s) and those of them that flag the text."""
        decided = self.decide(scores)
        if self.mode == "multi":
            return [(labels, list(labels)) for labels in decided]
        negative = self.negative_outcome
        return [(label, [] if label == negative else [label]) for label in decided]

    def is_flagged(self, decided: Any) -> bool:
        """Whether one decided row (a label, or a label list for multi-label) flags its text."""
        if self.mode == "single":
            return bool(decided != self.negative_outcome)
        if self.overall is not None:
            return self.overall in decided
        return len(decided) > 0

    def flag_scores(self, scores: np.ndarray) -> np.ndarray:
        """One "how flagged" number per row: the overall label's score, else the score of not
        being the negative label, else the highest label score."""
        names = self.label_names
        if self.overall is not None:
            return scores[:, names.index(self.overall)]
        if self.mode == "single" and self.negative_label in names:
            return 1.0 - scores[:, names.index(self.negative_label)]
        return scores.max(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """The task as it is written into ``guardtune.json`` (defaults left out where they add nothing)."""
        data = self.model_dump()
        data["policy"] = {k: v for k, v in data["policy"].items() if v not in (None, {}, 0.0)}
        if not data["policy"]:
            del data["policy"]
        for key in ("instruction", "template", "overall"):
            if data[key] is None:
                del data[key]
        if self.overall is None:
            del data["category_column"]
        return data

    def decide(self, scores: np.ndarray) -> list[Any]:
        """Apply the policy to a ``(rows, labels)`` score matrix.

        Returns:
            one label per row for ``single``; a list of active labels per row for ``multi``.
        """
        names = self.label_names
        index = {name: i for i, name in enumerate(names)}
        if self.mode == "multi":
            thresholds = np.array([self.policy.thresholds.get(n, 0.5) for n in names])
            active = scores >= thresholds
            if self.overall is not None:
                # Categories describe a flagged text; alone they do not flag it.
                active &= active[:, [names.index(self.overall)]]
            return [[names[j] for j in np.flatnonzero(row)] for row in active]
        decided: list[str] = []
        for row in scores:
            choice = None
            for name, threshold in self.policy.thresholds.items():
                if row[index[name]] >= threshold:
                    choice = name
                    break
            if choice is None:
                best = int(np.argmax(row))
                if row[best] >= self.policy.min_confidence or self.policy.fallback is None:
                    choice = names[best]
                else:
                    choice = self.policy.fallback
            decided.append(choice)
        return decided


def builtin_tasks() -> dict[str, Path]:
    """Built-in task names mapped to their YAML files (the registry is the ``tasks`` folder)."""
    folder = files("guardtune").joinpath("tasks")
    return {
        Path(str(entry)).stem: Path(str(entry)) for entry in folder.iterdir() if str(entry).endswith(".yaml")
    }


def load_task(name_or_path: str | Path) -> TaskSpec:
    """Load a built-in task by name, or a task YAML file by path.

    Args:
        name_or_path: ``pii-intent``, ``pii-categories``, ``moderation``, or a path to YAML.

    Returns:
        The validated :class:`TaskSpec`.

    Raises:
        GuardtuneError: the file is missing or unreadable, or lists every problem found in it.

    Example:
        >>> load_task("pii-intent").label_names
        ['none', 'asking', 'giving']
    """
    known = builtin_tasks()
    text = str(name_or_path)
    path = known.get(text) or Path(text)
    if not path.is_file():
        raise GuardtuneError(
            f"{text}: no such task file and not a built-in task (built-in: {', '.join(sorted(known))})"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).replace("\n", " ")
        raise GuardtuneError(f"{path}: not valid YAML: {reason}") from exc
    return task_from_dict(raw, source=str(path))


def task_from_dict(raw: Any, source: str = "<task>") -> TaskSpec:
    """Validate a parsed task mapping, reporting every problem at once.

    Raises:
        GuardtuneError: ``SOURCE: key: expected X, found Y; ...`` naming every problem.
    """
    if not isinstance(raw, dict):
        raise GuardtuneError(f"{source}: expected a mapping of task keys, found {type(raw).__name__}")
    # The rules across fields run on the raw mapping too, so they are reported beside field errors.
    return parse(TaskSpec, raw, source, extra=rules_across_fields(raw), context={"rules_checked": True})


def rules_across_fields(raw: dict[str, Any]) -> list[str]:
    """Problems between keys of a task mapping (each key's own type is the schema's job)."""
    mode = raw.get("mode", "single")
    labels = raw.get("labels")
    names = [str(k) for k in labels] if isinstance(labels, dict) else []
    problems = []
    if mode == "single" and len(names) == 1:
        problems.append("labels: a single-label task needs at least 2 labels")
    overall = raw.get("overall")
    if overall is not None:
        if mode != "multi":
            problems.append("overall: applies to multi-label tasks only (mode: multi)")
        if names and overall not in names:
            problems.append(f"overall: expected one of the labels {names}, found {overall!r}")
        if overall == raw.get("negative_label", "safe"):
            problems.append("overall: must differ from negative_label")
    elif "category_column" in raw:
        problems.append("category_column: needs overall (the label the categories refine)")
    policy = raw.get("policy")
    if not isinstance(policy, dict):
        return problems
    thresholds = policy.get("thresholds")
    for label in thresholds if isinstance(thresholds, dict) else ():
        if names and label not in names:
            problems.append(f"policy.thresholds: unknown label {label!r} (labels: {names})")
    fallback = policy.get("fallback")
    if fallback is not None and names and fallback not in names:
        problems.append(f"policy.fallback: unknown label {fallback!r} (labels: {names})")
    if mode == "multi" and (fallback is not None or "min_confidence" in policy):
        problems.append("policy: fallback and min_confidence apply to single-label tasks only")
    return problems
