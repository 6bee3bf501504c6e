"""Fuzz the file readers: whatever the bytes, only guardtune's one-line errors come out."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardtune.data.readers import load_examples
from guardtune.errors import GuardtuneError
from guardtune.eval.calibration import Calibration
from guardtune.modeldir import read_json_object, read_manifest
from guardtune.task import load_task, task_from_dict

INTENT = load_task("pii-intent")
MULTI = task_from_dict({"name": "cats", "mode": "multi", "labels": {"asking": "", "giving": ""}})
FUZZ = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_names = itertools.count()

# Text a careless or hostile file holds: lone surrogates, control characters, long and empty cells.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None, categories=["Cs"]), min_size=1, max_size=3),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=10),
    st.sampled_from(["", " ", "none", "asking", "giving,asking", "safe", '"', "a,b", "\r\n", "x" * 5000]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | nasty_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(nasty_text, inner, max_size=4),
    max_leaves=10,
)


def only_one_line_errors(call: Callable[[], Any]) -> None:
    """``call()`` either works or raises a GuardtuneError whose message is one line."""
    try:
        call()
    except GuardtuneError as exc:
        assert "\n" not in str(exc) and str(exc), repr(exc)


def _write(folder: Path, suffix: str, data: bytes) -> Path:
    path = folder / f"f{next(_names)}{suffix}"
    path.write_bytes(data)
    return path


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")  # a lone surrogate becomes invalid UTF-8


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ".parquet"]))
def test_random_bytes_in_any_reader(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = _write(tmp_path, suffix, data)
    only_one_line_errors(lambda: load_examples(path, INTENT))
    only_one_line_errors(lambda: load_examples(path, MULTI, require_labels=False))


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(["text", "label", "labels", "p_none", "scores", "x"]), min_size=1, max_size=4
    ),
    rows=st.lists(st.lists(nasty_text, min_size=0, max_size=5), max_size=6),
)
def test_csv_files_with_nasty_cells(tmp_path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path = _write(tmp_path, ".csv", _encode(buffer.getvalue()))
    only_one_line_errors(lambda: load_examples(path, INTENT))
    only_one_line_errors(lambda: load_examples(path, MULTI))


@FUZZ
@given(
    records=st.lists(json_values, max_size=5),
    labelled=st.lists(st.tuples(nasty_text, nasty_text), max_size=4),
)
def test_jsonl_files_with_nasty_records(tmp_path: Path, records: list[Any], labelled: list[tuple]) -> None:
    lines = [json.dumps(r) for r in records] + [json.dumps({"text": t, "label": lab}) for t, lab in labelled]
    path = _write(tmp_path, ".jsonl", "\n".join(lines).encode())
    only_one_line_errors(lambda: load_examples(path, INTENT))
    only_one_line_errors(lambda: load_examples(path, MULTI, require_labels=False))


@FUZZ
@given(
    texts=st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=20)), min_size=1, max_size=5),
    labels=st.lists(st.sampled_from(["none", "asking", "bad", ""]), min_size=1, max_size=5),
)
def test_parquet_files_with_odd_columns(tmp_path: Path, texts: list[Any], labels: list[str]) -> None:
    size = min(len(texts), len(labels))
    frame = pd.DataFrame({"text": pd.Series(texts[:size], dtype=object), "label": labels[:size]})
    path = tmp_path / f"f{next(_names)}.parquet"
    try:
        frame.to_parquet(path)
    except Exception:  # pyarrow refuses a column of mixed types; nothing to read then
        return
    only_one_line_errors(lambda: load_examples(path, INTENT))


@pytest.mark.filterwarnings("ignore:calibration.json. ignoring keys:UserWarning")
@FUZZ
@given(value=json_values, raw=st.binary(max_size=100))
def test_model_json_files(tmp_path: Path, value: Any, raw: bytes) -> None:
    folder = tmp_path / f"m{next(_names)}"
    folder.mkdir()
    (folder / "guardtune.json").write_text(json.dumps(value))
    only_one_line_errors(lambda: read_manifest(folder))
    only_one_line_errors(lambda: Calibration.from_json(json.dumps(value), source="calibration.json"))
    (folder / "label_tokens.json").write_bytes(raw)
    only_one_line_errors(lambda: read_json_object(folder / "label_tokens.json"))


@FUZZ
@given(
    task=st.dictionaries(st.sampled_from(["name", "mode", "labels", "policy", "text_fields"]), json_values)
)
def test_task_files(tmp_path: Path, task: dict[str, Any]) -> None:
    path = _write(tmp_path, ".yaml", _encode(json.dumps(task)))  # JSON is YAML
    only_one_line_errors(lambda: load_task(str(path)))


@pytest.mark.parametrize("content", [b"\xff\xfe\x00", b"name: [", b"- a\n- b\n", b""])
def test_task_files_that_are_not_a_mapping(tmp_path: Path, content: bytes) -> None:
    path = _write(tmp_path, ".yaml", content)
    only_one_line_errors(lambda: load_task(str(path)))
