"""Task specs: what is classified (labels, mode, text fields) and how scores become labels (policy).

A task is YAML. Built-in tasks live beside this module in ``tasks/<name>.yaml`` and are found by
name; any other path to a YAML file works the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from guardtune.errors import GuardtuneError

Mode = Literal["single", "multi"]
LongText = Literal["head-tail", "windows"]
LONG_TEXT_MODES: tuple[str, ...] = ("head-tail", "windows")
_KNOWN_KEYS = {
    "overall",
    "category_column",
    "long_text",
    "name",
    "mode",
    "labels",
    "text_fields",
    "label_column",
    "instruction",
    "template",
    "policy",
    "negative_label",
}
_POLICY_KEYS = {"thresholds", "min_confidence", "fallback"}


@dataclass(frozen=True)
class Policy:
    """How per-label scores become a decision.

    Single-label: labels in ``thresholds`` are checked in the order given and the first whose score
    reaches its threshold wins; otherwise the most likely label if its score reaches
    ``min_confidence``; otherwise ``fallback``. Multi-label: a label is on when its score reaches
    its threshold (0.5 unless set).
    """

    thresholds: dict[str, float] = field(default_factory=dict)
    min_confidence: float = 0.0
    fallback: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """A validated classification task.

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

    name: str
    mode: Mode
    labels: dict[str, str]
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    instruction: str | None = None
    template: str | None = None
    policy: Policy = field(default_factory=Policy)
    negative_label: str = "safe"
    overall: str | None = None
    category_column: str = "categories"
    long_text: LongText = "head-tail"

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
        data = asdict(self)
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
    """Validate a parsed task mapping, reporting every problem at once."""
    problems = validate_task_dict(raw)
    if problems:
        raise GuardtuneError(f"{source}: " + "; ".join(problems))
    mode = raw.get("mode", "single")
    policy_raw = raw.get("policy") or {}
    policy = Policy(
        thresholds={str(k): float(v) for k, v in (policy_raw.get("thresholds") or {}).items()},
        min_confidence=float(policy_raw.get("min_confidence", 0.0)),
        fallback=policy_raw.get("fallback"),
    )
    return TaskSpec(
        name=str(raw["name"]),
        mode=mode,
        labels={str(k): str(v or "") for k, v in raw["labels"].items()},
        text_fields=[str(f) for f in raw.get("text_fields") or ["text"]],
        label_column=str(raw.get("label_column") or ("labels" if mode == "multi" else "label")),
        instruction=raw.get("instruction"),
        template=raw.get("template"),
        policy=policy,
        negative_label=str(raw.get("negative_label", "safe")),
        overall=raw.get("overall"),
        category_column=str(raw.get("category_column") or "categories"),
        long_text=raw.get("long_text", "head-tail"),
    )


def validate_task_dict(raw: Any) -> list[str]:
    """Every problem in a parsed task mapping, as ``key: what was expected`` strings."""
    if not isinstance(raw, dict):
        return [f"expected a mapping of task keys, found {type(raw).__name__}"]
    problems = [f"unknown key {key!r}" for key in raw if key not in _KNOWN_KEYS]
    if not isinstance(raw.get("name"), str) or not raw.get("name"):
        problems.append("name: expected a non-empty string")
    mode = raw.get("mode", "single")
    if mode not in ("single", "multi"):
        problems.append(f"mode: expected 'single' or 'multi', found {mode!r}")
    labels = raw.get("labels")
    label_names: list[str] = []
    if isinstance(labels, list) and all(isinstance(x, str) for x in labels):
        problems.append("labels: expected a mapping of label name to description, found a list")
    elif not isinstance(labels, dict) or not labels:
        problems.append("labels: expected a non-empty mapping of label name to description")
    else:
        label_names = [str(k) for k in labels]
        if mode == "single" and len(label_names) < 2:
            problems.append("labels: a single-label task needs at least 2 labels")
        bad = [n for n in label_names if "," in n or not n.strip()]
        if bad:
            problems.append(f"labels: names must be non-empty and contain no comma: {bad}")
    fields = raw.get("text_fields", ["text"])
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        problems.append("text_fields: expected a non-empty list of column names")
    if "label_column" in raw and not isinstance(raw["label_column"], str):
        problems.append("label_column: expected a column name")
    if "instruction" in raw and not isinstance(raw["instruction"], str):
        problems.append("instruction: expected a string")
    template = raw.get("template")
    if template is not None and (not isinstance(template, str) or template.count("{text}") != 1):
        problems.append("template: expected a string with {text} exactly once")
    overall = raw.get("overall")
    if overall is not None:
        if mode != "multi":
            problems.append("overall: applies to multi-label tasks only (mode: multi)")
        if label_names and overall not in label_names:
            problems.append(f"overall: expected one of the labels {label_names}, found {overall!r}")
        if overall == raw.get("negative_label", "safe"):
            problems.append("overall: must differ from negative_label")
    elif "category_column" in raw:
        problems.append("category_column: needs overall (the label the categories refine)")
    if "category_column" in raw and not isinstance(raw["category_column"], str):
        problems.append("category_column: expected a column name")
    long_text = raw.get("long_text", "head-tail")
    if long_text not in LONG_TEXT_MODES:
        problems.append(f"long_text: expected one of {list(LONG_TEXT_MODES)}, found {long_text!r}")
    problems.extend(_validate_policy(raw.get("policy"), label_names, mode))
    return problems


def _validate_policy(policy: Any, label_names: list[str], mode: str) -> list[str]:
    if policy is None:
        return []
    if not isinstance(policy, dict):
        return ["policy: expected a mapping with thresholds, min_confidence, fallback"]
    problems = [f"policy: unknown key {key!r}" for key in policy if key not in _POLICY_KEYS]
    thresholds = policy.get("thresholds") or {}
    if not isinstance(thresholds, dict):
        problems.append("policy.thresholds: expected a mapping of label to a number in [0, 1]")
    else:
        for label, value in thresholds.items():
            if label_names and label not in label_names:
                problems.append(f"policy.thresholds: unknown label {label!r} (labels: {label_names})")
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                problems.append(f"policy.thresholds.{label}: expected a number in [0, 1]")
    confidence = policy.get("min_confidence", 0.0)
    if not isinstance(confidence, int | float) or not 0.0 <= confidence <= 1.0:
        problems.append("policy.min_confidence: expected a number in [0, 1]")
    fallback = policy.get("fallback")
    if fallback is not None and label_names and fallback not in label_names:
        problems.append(f"policy.fallback: unknown label {fallback!r} (labels: {label_names})")
    if mode == "multi" and (fallback is not None or "min_confidence" in policy):
        problems.append("policy: fallback and min_confidence apply to single-label tasks only")
    return problems
