from pathlib import Path

import numpy as np
import pytest

from guardtune.errors import GuardtuneError
from guardtune.task import builtin_tasks, load_task


def test_builtin_tasks_load_with_their_labels() -> None:
    assert set(builtin_tasks()) >= {"pii-intent", "pii-categories", "moderation"}
    assert load_task("pii-intent").label_names == ["none", "asking", "giving"]
    categories = load_task("pii-categories")
    assert categories.mode == "multi"
    assert categories.label_names == ["S1", "S2", "S3", "S4", "S5"]
    assert categories.label_column == "labels"
    moderation = load_task("moderation")
    assert moderation.mode == "multi" and moderation.overall == "unsafe"
    assert moderation.label_names[0] == "unsafe" and "hate" in moderation.categories


def test_task_file_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: ''\nmode: sometimes\nlabels: [a, b]\ncolour: red\n")
    with pytest.raises(GuardtuneError) as info:
        load_task(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in (
        "unknown key 'colour'",
        "name:",
        "mode: expected 'single' or 'multi'",
        "labels:",
    ):
        assert fragment in message


def test_invalid_yaml_and_missing_file_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(GuardtuneError, match="not valid YAML"):
        load_task(path)
    with pytest.raises(GuardtuneError, match="no such task file and not a built-in task"):
        load_task(tmp_path / "absent.yaml")


def test_policy_thresholds_checked_in_order_then_confidence_then_fallback(tmp_path: Path) -> None:
    # The PII teacher's rule: asking >= 0.2, giving >= 0.3, else argmax if max >= 0.2691, else none.
    path = tmp_path / "teacher.yaml"
    path.write_text(
        "name: pii\nlabels: {none: '', asking: '', giving: ''}\n"
        "policy: {thresholds: {asking: 0.2, giving: 0.3}, min_confidence: 0.2691, fallback: none}\n"
    )
    task = load_task(path)
    scores = np.array([[0.7, 0.25, 0.05], [0.6, 0.1, 0.3], [0.9, 0.05, 0.05], [0.25, 0.19, 0.26]])
    # The last row cannot occur with a softmax (it sums to 0.7) but exercises the fallback.
    assert task.decide(scores) == ["asking", "giving", "none", "none"]


def test_policy_with_unknown_label_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: t\nlabels: {a: '', b: ''}\npolicy: {thresholds: {c: 2}}\n")
    with pytest.raises(GuardtuneError) as info:
        load_task(path)
    assert "unknown label 'c'" in str(info.value)
    assert "expected a number in [0, 1]" in str(info.value)


def test_multi_label_decision_uses_per_label_thresholds() -> None:
    task = load_task("pii-categories")
    scores = np.array([[0.9, 0.1, 0.6, 0.0, 0.49], [0.1, 0.1, 0.1, 0.1, 0.1]])
    assert task.decide(scores) == [["S1", "S3"], []]
