import json
from pathlib import Path

import pandas as pd
import pytest

from guardtune.data.readers import label_counts, load_examples
from guardtune.errors import GuardtuneError
from guardtune.task import load_task

PII = load_task("pii-intent")


def _csv(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_csv_jsonl_and_parquet_alike(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["hi there", "my email is a@b.co"], "label": ["none", "giving"]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.jsonl", "d.parquet"):
        rows = load_examples(tmp_path / name, PII)
        assert rows.texts == ["hi there", "my email is a@b.co"]
        assert rows.labels == ["none", "giving"]


def test_several_text_fields_are_joined(tmp_path: Path) -> None:
    task = load_task("pii-intent")
    task = type(task)(**{**task.__dict__, "text_fields": ["title", "body"]})
    path = _csv(tmp_path, "title,body,label\nhello,whats ur snap,asking\n,only body,none\n")
    rows = load_examples(path, task)
    assert rows.texts == ["hello\nwhats ur snap", "only body"]


def test_multi_label_cells_are_parsed_in_task_order(tmp_path: Path) -> None:
    task = load_task("pii-categories")
    path = _csv(tmp_path, 'text,labels\na,"S3, S1"\nb,\nc,safe\n')
    rows = load_examples(path, task)
    assert rows.labels == [["S1", "S3"], [], []]
    assert label_counts(task, rows.labels) == {
        "S1": 1,
        "S2": 0,
        "S3": 1,
        "S4": 0,
        "S5": 0,
        "safe": 2,
    }


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("message,label\nhi,none\n", "missing text column 'text' (found columns: message, label)"),
        (
            "text,labl\nhi,none\n",
            "missing label column 'label' (found columns: text, labl); did you mean 'labl'?",
        ),
        (
            "text,label\nhi,none\nyo,maybe\n",
            "row 3: unknown label 'maybe' in column 'label' (expected one of: none, asking, giving)",
        ),
        (
            "text,label\nhi,none\n  ,asking\n",
            "row 3: empty text in text (expected a non-empty message)",
        ),
        ("text,label\n", "no data rows"),
        ("", "the file is empty"),
    ],
)
def test_bad_csv_gets_one_line_error_naming_file_and_row(tmp_path: Path, content: str, expected: str) -> None:
    path = _csv(tmp_path, content)
    with pytest.raises(GuardtuneError) as info:
        load_examples(path, PII)
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "\n" not in message


def test_non_utf8_unsupported_and_missing_files(tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,none\n".encode("latin-1"))
    with pytest.raises(GuardtuneError, match="not UTF-8"):
        load_examples(latin, PII)
    with pytest.raises(GuardtuneError, match=r"unsupported file type '\.xlsx'"):
        load_examples(tmp_path / "data.xlsx", PII)
    with pytest.raises(GuardtuneError, match="no such file"):
        load_examples(tmp_path / "absent.csv", PII)


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a", "label": "none"}) + "\n{not json\n")
    with pytest.raises(GuardtuneError, match=r"d.jsonl: line 2: not valid JSON"):
        load_examples(path, PII)


def test_unknown_multi_label_category(tmp_path: Path) -> None:
    path = _csv(tmp_path, 'text,labels\na,"S1,S9"\n')
    with pytest.raises(GuardtuneError, match="row 2: unknown label 'S9'"):
        load_examples(path, load_task("pii-categories"))


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ("0.5,0.4,0.3", "teacher scores sum to 1.2000"),
        ("1.5,-0.3,-0.2", "p_none is '1.5' (expected a probability in [0, 1])"),
    ],
)
def test_bad_soft_labels_get_one_line_errors(tmp_path: Path, cells: str, expected: str) -> None:
    path = tmp_path / "soft.csv"
    path.write_text(f"text,label,p_none,p_asking,p_giving\nhi,none,1,0,0\nyo,none,{cells}\n")
    with pytest.raises(GuardtuneError, match="row 3: ") as info:
        load_examples(path, PII)
    assert expected in str(info.value)
