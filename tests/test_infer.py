"""Inference engine: streaming files of any size, chunk-independent output, bf16 against fp32."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from guardtune.api import Classifier, predict_file, train
from guardtune.data.readers import load_examples
from guardtune.task import load_task
from guardtune.train import TrainSettings

TASK = load_task("pii-intent")


@pytest.fixture(scope="module")
def model_dir(tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = TrainSettings(epochs=4, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, dtype="fp32")
    out = tmp_path_factory.mktemp("infer") / "model"
    return train(TASK, toy_files["train"], out, base=tiny_base, settings=settings).directory


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_output_does_not_depend_on_chunk_size(
    model_dir: Path, toy_files: dict[str, Path], tmp_path: Path, suffix: str
) -> None:
    source = pd.read_csv(toy_files["test"])
    data = tmp_path / f"in{suffix}"
    {
        ".csv": source.to_csv,
        ".jsonl": lambda p, **_: source.to_json(p, orient="records", lines=True),
        ".parquet": source.to_parquet,
    }[suffix](data, index=False)
    classifier = Classifier.load(model_dir, dtype="fp32")
    whole, chunked = tmp_path / f"whole{suffix}", tmp_path / f"chunked{suffix}"
    counts = predict_file(classifier, data, whole, chunk_rows=10_000, progress=False)
    assert predict_file(classifier, data, chunked, chunk_rows=7, progress=False) == counts
    read = {
        ".csv": pd.read_csv,
        ".jsonl": lambda p: pd.read_json(p, lines=True),
        ".parquet": pd.read_parquet,
    }[suffix]
    pd.testing.assert_frame_equal(read(whole), read(chunked))
    assert sum(counts.values()) == len(source)
    assert not list(tmp_path.glob(".*.tmp"))


def test_bf16_and_fp32_agree_on_labels(model_dir: Path, toy_files: dict[str, Path]) -> None:
    texts = load_examples(toy_files["test"], TASK).texts
    fp32 = Classifier.load(model_dir, dtype="fp32").predict_proba(texts)
    bf16 = Classifier.load(model_dir, dtype="bf16").predict_proba(texts)
    assert (fp32.argmax(axis=1) == bf16.argmax(axis=1)).all()
    assert np.abs(fp32 - bf16).max() < 0.1


_MEASURE = """
import json, sys
from guardtune.api import Classifier, predict_file
classifier = Classifier.load(sys.argv[1], dtype="fp32")
predict_file(classifier, sys.argv[2], sys.argv[3], chunk_rows=1000, progress=False)
# VmHWM is this process's own peak; ru_maxrss would carry the parent's peak across exec.
status = open("/proc/self/status").read()
print(json.dumps({"max_rss_kb": int(status.split("VmHWM:")[1].split()[0])}))
"""


def _peak_rss_mb(model_dir: Path, data: Path, out: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(model_dir), str(data), str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["max_rss_kb"] / 1024


def test_streaming_predict_keeps_memory_flat(model_dir: Path, tmp_path: Path) -> None:
    # Rows carry a 10 KB column the model never reads, so holding the file whole would show:
    # 15,000 rows are 150 MB of payload, 1,500 rows 15 MB.
    payload = "x" * 10_000
    sizes = {}
    for n in (1_500, 15_000):
        data = tmp_path / f"in-{n}.csv"
        frame = pd.DataFrame({"text": ["gg nice game", "whats ur number", "my mail is here"] * (n // 3 + 1)})
        frame = frame.iloc[:n].assign(payload=payload)
        frame.to_csv(data, index=False)
        sizes[n] = _peak_rss_mb(model_dir, data, tmp_path / f"out-{n}.csv")
        assert len(pd.read_csv(tmp_path / f"out-{n}.csv", usecols=["label"])) == n
    assert sizes[15_000] - sizes[1_500] < 40, sizes


@pytest.mark.parametrize(
    ("lengths", "batch_size", "max_tokens", "expected"),
    [
        ([1, 2, 3, 4, 5], 2, None, [(0, 2), (2, 4), (4, 5)]),
        ([1, 2, 3, 100, 200, 300, 2000], 3, 400, [(0, 3), (3, 5), (5, 6), (6, 7)]),
        ([10] * 8, 32, 30, [(0, 3), (3, 6), (6, 8)]),
        ([5, 50], 4, 8, [(0, 1), (1, 2)]),  # a row longer than the budget goes alone
        ([5, 50, 5], 4, 60, [(0, 1), (1, 2), (2, 3)]),  # unsorted: padded to the longest so far
        ([], 4, 16, []),
    ],
)
def test_length_batches_cap_rows_and_padded_tokens(
    lengths: list[int], batch_size: int, max_tokens: int | None, expected: list[tuple[int, int]]
) -> None:
    from guardtune.batches import length_batches

    slices = list(length_batches(lengths, batch_size, max_tokens))
    assert [(s.start, s.stop) for s in slices] == expected
    for s in slices:
        rows = lengths[s]
        assert len(rows) <= batch_size
        assert len(rows) == 1 or max_tokens is None or len(rows) * max(rows) <= max_tokens


@pytest.mark.parametrize(
    ("batch_size", "max_tokens", "message"),
    [
        (0, 16, "--batch-size: expected a positive integer, found 0"),
        (4, -3, "--max-batch-tokens: expected 0 (no limit) or a positive integer, found -3"),
    ],
)
def test_length_batches_reject_bad_sizes_in_one_line(batch_size: int, max_tokens: int, message: str) -> None:
    from guardtune.batches import length_batches
    from guardtune.errors import GuardtuneError

    with pytest.raises(GuardtuneError, match=re.escape(message)) as raised:
        list(length_batches([3, 4], batch_size, max_tokens))
    assert "\n" not in str(raised.value)


def test_a_token_budget_of_zero_is_no_limit() -> None:
    from guardtune.batches import length_batches, token_budget

    assert token_budget(0) is None and token_budget(None) is None and token_budget(7) == 7
    assert [(s.start, s.stop) for s in length_batches([400, 500], 8, 0)] == [(0, 2)]


def test_token_budget_splits_passes_without_changing_scores(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    classifier = Classifier.load(model_dir, dtype="fp32")
    texts = ["gg", "whats ur number", "my mail is here " * 6, "ok " * 20, "send me ur address pls", "hi"]
    unlimited = classifier.predict_proba(texts, batch_size=8, max_batch_tokens=None)
    shapes: list[tuple[int, int]] = []
    scores = classifier.method.scores

    def recording(input_ids, attention_mask, prefix=None):  # type: ignore[no-untyped-def]
        shapes.append(tuple(input_ids.shape))
        return scores(input_ids, attention_mask, prefix=prefix)

    monkeypatch.setattr(classifier.method, "scores", recording)
    budgeted = classifier.predict_proba(texts, batch_size=8, max_batch_tokens=24)
    assert len(shapes) > 1
    for rows, width in shapes:
        assert rows * width <= 24 or rows == 1
    np.testing.assert_allclose(budgeted, unlimited, atol=1e-5)

    # Read in windows, a text's windows are scored within the budget too.
    shapes.clear()
    classifier.long_text = "windows"
    classifier.predict_proba(["my mail is here " * 12, "gg"], batch_size=8, max_batch_tokens=40)
    assert len(shapes) > 1 and all(rows * width <= 40 or rows == 1 for rows, width in shapes)
