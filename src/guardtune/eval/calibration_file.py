"""The ``calibration.json`` record (a temperature and thresholds, its schema), applying it, and its options.

Kept apart from the fitting code (``calibration.py``) so applying a calibration at inference loads
neither scipy.optimize nor sklearn.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict, StrictStr, model_validator
from pydantic.dataclasses import dataclass
from pydantic.json_schema import SkipJsonSchema
from scipy.special import expit, softmax

from guardtune.atomic import atomic_file
from guardtune.errors import GuardtuneError
from guardtune.task import Mode, TaskSpec
from guardtune.validation import Unit, check, one_of, parse

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
Objective = Literal["f1", "max_fpr", "min_recall"]
OBJECTIVES: tuple[Objective, ...] = ("f1", "max_fpr", "min_recall")
PRECISIONS = ("bf16", "fp32", "int8")
# The CLI option each objective is set with, for messages.
OPTION_NAMES = {"f1": "--objective f1", "max_fpr": "--max-fpr", "min_recall": "--min-recall"}

# Single-label probabilities only need to stay away from log(0); sigmoid logits need both ends.
_SINGLE_EPS = 1e-12
_MULTI_EPS = 1e-7


def logits_from_proba(scores: np.ndarray, mode: Mode) -> np.ndarray:
    """Logits that reproduce ``scores``: ``log p`` (single, up to a row constant) or ``logit p`` (multi)."""
    p = np.asarray(scores, dtype=np.float64)
    if mode == "single":
        return np.log(np.clip(p, _SINGLE_EPS, 1.0))
    p = np.clip(p, _MULTI_EPS, 1.0 - _MULTI_EPS)
    return np.log(p) - np.log1p(-p)


def apply_temperature(scores: np.ndarray, temperature: float, mode: Mode) -> np.ndarray:
    """Probabilities with the logits divided by ``temperature``, in the dtype of ``scores``."""
    scores = np.asarray(scores)
    z = logits_from_proba(scores, mode) / temperature
    out = softmax(z, axis=1) if mode == "single" else expit(z)
    dtype = scores.dtype if np.issubdtype(scores.dtype, np.floating) else np.float64
    return np.asarray(out, dtype=dtype)


def _positive(value: float) -> float:
    check(value > 0, "expected a positive number")
    return value


def _row_count(value: int) -> int:
    check(value >= 0, "expected a row count")
    return value


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


# Strict per field rather than for the class: a strict dataclass refuses a mapping as its input.
@dataclass(config=ConfigDict(extra="ignore"))
class Calibration:
    """A fitted calibration: a temperature for the scores and decision thresholds for some labels.

    Attributes:
        temperature: logits are divided by it before the softmax / sigmoid.
        mode: the task mode the temperature was fitted for.
        labels: the task's labels, in score column order (checked against the model on load).
        thresholds: label -> threshold on the calibrated score; they replace the task policy's
            thresholds for those labels (see :func:`guardtune.eval.calibration.calibrated_task`).
        objective: ``f1``, ``max_fpr`` or ``min_recall``.
        target: the FPR or recall target, when the objective has one.
        label: the label the target was set for, when one was named.
        achieved: label -> ``precision``, ``recall``, ``fpr`` of the calibrated decisions on the
            fitting rows (one label against the rest).
        ece_before, ece_after: expected calibration error on the fitting rows, raw and calibrated.
        n: fitting rows.
        source: the fitting file's name.
        precision: ``bf16``, ``fp32`` or ``int8``, what the model's projections ran in when the
            scores were computed (``Classifier.load`` warns when the model runs in another).
    """

    temperature: Annotated[float, Strict(), AfterValidator(_positive)] = Field(
        description="Logits are divided by it."
    )
    mode: Mode = Field(description="The task mode the temperature was fitted for.")
    labels: list[StrictStr] = Field(min_length=1, description="The task's labels, in score column order.")
    thresholds: Annotated[dict[StrictStr, Unit], BeforeValidator(_none_is_empty)] = Field(
        default_factory=dict, description="Label -> threshold on the calibrated score."
    )
    objective: Objective = "f1"
    target: Unit | None = None
    label: StrictStr | None = None
    achieved: Annotated[dict[StrictStr, dict[str, Any]], BeforeValidator(_none_is_empty)] = Field(
        default_factory=dict, description="Label -> precision, recall, fpr on the fitting rows."
    )
    ece_before: Unit | None = None
    ece_after: Unit | None = None
    n: Annotated[int, Strict(), AfterValidator(_row_count)] = 0
    source: StrictStr | None = None
    precision: one_of(PRECISIONS) | None = Field(  # type: ignore[valid-type]
        default=None, description="What the model's projections ran in when the scores were computed."
    )
    notes: SkipJsonSchema[list[str]] = field(default_factory=list, compare=False)

    @model_validator(mode="after")
    def _labels_known(self) -> Calibration:
        unknown = [name for name in self.thresholds if name not in self.labels]
        check(
            not unknown,
            f"key 'thresholds': unknown label {unknown[0]!r} (labels: {self.labels})" if unknown else "",
        )
        check(
            self.label is None or self.label in self.labels,
            f"key 'label': expected one of {self.labels} or null, found {self.label!r}",
        )
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for a raw ``(rows, labels)`` score matrix."""
        return apply_temperature(scores, self.temperature, self.mode)

    def to_json(self) -> str:
        data = {"format_version": FORMAT_VERSION, **asdict(self)}
        del data["notes"]  # messages for the person fitting it, not part of the record
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = CALIBRATION_FILE) -> Calibration:
        """Parse and check a ``calibration.json`` text.

        Raises:
            GuardtuneError: not JSON, or keys with missing or bad values (one line naming each).
        """
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GuardtuneError(f"{source}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise GuardtuneError(f"{source}: expected a JSON object, found {type(raw).__name__}")
        unknown = sorted(set(raw) - {f.name for f in fields(cls) if f.name != "notes"} - {"format_version"})
        if unknown:
            warnings.warn(
                f"{source}: ignoring keys this guardtune does not know (written by a newer version?): "
                f"{unknown}",
                stacklevel=2,
            )
        return parse(cls, {k: v for k, v in raw.items() if k != "notes"}, source, quoted=True)

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/calibration.json`` atomically; returns its path."""
        path = Path(directory) / CALIBRATION_FILE
        with atomic_file(path) as tmp:
            tmp.write_text(self.to_json(), encoding="utf-8")
        return path


def read_calibration(directory: str | Path, task: TaskSpec | None = None) -> Calibration | None:
    """``directory/calibration.json`` if present (``None`` otherwise), checked against ``task``.

    Raises:
        GuardtuneError: unreadable or invalid file, or labels / mode that do not match the task.
    """
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GuardtuneError(f"{path}: cannot read ({exc})") from exc
    calibration = Calibration.from_json(text, source=str(path))
    if task is not None:
        if calibration.labels != task.label_names:
            raise GuardtuneError(
                f"{path}: key 'labels': {calibration.labels} do not match the model's labels "
                f"{task.label_names}; run `guardtune calibrate` again"
            )
        if calibration.mode != task.mode:
            raise GuardtuneError(f"{path}: key 'mode': {calibration.mode!r} but the task is {task.mode!r}")
    return calibration


# --- applying thresholds to a task ---------------------------------------------------------------


def with_thresholds(task: TaskSpec, thresholds: dict[str, float]) -> TaskSpec:
    """``task`` whose policy uses ``thresholds`` for those labels (order and other labels kept).

    In a two-label single-label task a threshold on one label makes the decision binary: that label
    when its score reaches the threshold, else the other label (the other label gets threshold 0,
    checked second). Otherwise the policy's rules apply unchanged: single-label thresholds are
    checked in order, then the most likely label; multi-label thresholds are independent.
    """
    if not thresholds:
        return task
    merged = {**task.policy.thresholds, **thresholds}
    if task.mode == "single" and len(task.label_names) == 2 and len(thresholds) == 1:
        (name,) = thresholds
        (other,) = (x for x in task.label_names if x != name)
        merged = {name: thresholds[name], other: 0.0}
    return task.model_copy(update={"policy": task.policy.model_copy(update={"thresholds": merged})})


def calibrated_task(task: TaskSpec, calibration: Calibration | None) -> TaskSpec:
    """The task whose policy decides on calibrated scores: the calibrated thresholds replace the
    policy's thresholds for their labels (see :func:`with_thresholds` for two-label tasks)."""
    return task if calibration is None else with_thresholds(task, calibration.thresholds)


def objective_for(max_fpr: float | None, min_recall: float | None) -> tuple[Objective, float | None]:
    """The objective and target for at most one of ``max_fpr`` / ``min_recall`` (neither: ``f1``).

    Raises:
        GuardtuneError: both given, or a target outside (0, 1).
    """
    if max_fpr is not None and min_recall is not None:
        raise GuardtuneError("--max-fpr and --min-recall: give at most one target")
    objective: Objective = "f1" if max_fpr is None and min_recall is None else "max_fpr"
    target = max_fpr
    if min_recall is not None:
        objective, target = "min_recall", min_recall
    if target is not None and not 0.0 < target < 1.0:
        raise GuardtuneError(
            f"{OPTION_NAMES[objective]} {target:g}: expected a number strictly between 0 and 1"
        )
    return objective, target


def threshold_labels(task: TaskSpec, objective: Objective, label: str | None) -> list[str]:
    """The labels that get a threshold.

    - a named ``label``: that label only;
    - a two-label single-label task: the positive label, ``unsafe`` when present, else the second;
    - a multi-label task: every label (each decided on its own);
    - a single-label task with three or more labels: none for ``f1`` (the most likely label stays
      the decision; thresholds checked one after another would favour the labels checked first);
      a target needs a named label.

    Raises:
        GuardtuneError: unknown label, or a target without a label where one is needed.
    """
    names = task.label_names
    if label is not None:
        if label not in names:
            raise GuardtuneError(
                f"--label {label!r}: not a label of task {task.name} (labels: {', '.join(names)})"
            )
        return [label]
    if task.overall is not None and objective != "f1":
        return [task.overall]
    if task.mode == "multi":
        return list(names)
    if len(names) == 2:
        return ["unsafe" if "unsafe" in names else names[1]]
    if objective == "f1":
        return []
    raise GuardtuneError(
        f"{OPTION_NAMES[objective]}: name the label it is for with --label (one of: {', '.join(names)})"
    )
