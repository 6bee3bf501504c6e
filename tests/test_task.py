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


def test_decision_rules_name_the_labels_that_flag_a_text() -> None:
    intent = load_task("pii-intent")  # single-label; "none" is the negative outcome
    assert intent.flag_labels == ["asking", "giving"]
    scores = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7]])
    assert intent.decide_flags(scores) == [("none", []), ("giving", ["giving"])]
    moderation = load_task("moderation")  # multi-label with an overall label
    assert moderation.flag_labels == moderation.categories and "unsafe" not in moderation.flag_labels
    row = np.zeros((1, len(moderation.label_names)))
    row[0, [0, moderation.label_names.index("hate")]] = 0.9
    assert moderation.decide_flags(row) == [(["unsafe", "hate"], ["unsafe", "hate"])]


def test_schema_command_prints_a_json_schema_the_built_in_tasks_meet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import jsonschema
    import yaml
    from conftest import run_cli

    assert run_cli(monkeypatch, "schema", "task") == 0
    schema = json.loads(capsys.readouterr().out)
    for path in builtin_tasks().values():
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "t", "labels": {"a": "", "b": ""}, "colour": "red"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "t", "labels": {"a": ""}, "policy": {"min_confidence": 2}}, schema)
    for kind, key in (("model", "max_length"), ("calibration", "temperature")):
        assert run_cli(monkeypatch, "schema", kind) == 0
        assert key in json.loads(capsys.readouterr().out)["required"]
    assert run_cli(monkeypatch, "schema", "bogus") == 1
