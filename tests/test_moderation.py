"""The moderation guard: an overall unsafe decision with harm categories that may be unknown."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from guardtune.api import Classifier, calibrate, evaluate, predict_file, train
from guardtune.data.readers import load_examples
from guardtune.errors import GuardtuneError
from guardtune.eval.metrics import multi_label_metrics
from guardtune.infer import predict_scores
from guardtune.long_text import head_and_tail, text_windows
from guardtune.methods.losses import multi_label_loss
from guardtune.serve import BackgroundServer, ServeSettings, create_app, load_guards
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings

MODERATION = load_task("moderation")


def _guard_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The toy task as a guard: none is safe; asking is harassment; giving is illicit on every
    other row and unsafe with no category on the rest."""
    out = pd.DataFrame({"text": frame["text"]})
    out["label"] = np.where(frame["label"] == "none", "safe", "unsafe")
    categories = np.where(frame["label"] == "asking", "harassment", "")
    giving = np.flatnonzero(frame["label"] == "giving")
    categories[giving[::2]] = "illicit"
    out["categories"] = categories
    return out


@pytest.fixture(scope="module")
def guard_files(toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("guard-data")
    paths = {}
    for name in ("train", "val", "test"):
        paths[name] = folder / f"{name}.csv"
        _guard_frame(pd.read_csv(toy_files[name])).to_csv(paths[name], index=False)
    only_label = folder / "only_label.csv"
    pd.read_csv(paths["test"])[["text", "label"]].to_csv(only_label, index=False)
    paths["only_label"] = only_label
    return paths


@pytest.fixture(scope="module")
def guard_model(
    tiny_base: str, guard_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    settings = TrainSettings(max_steps=30, batch_size=16, max_length=32, learning_rate=3e-3, dtype="fp32")
    out = tmp_path_factory.mktemp("guard") / "model"
    train(MODERATION, guard_files["train"], out, base=tiny_base, settings=settings)
    return out


# -- the task and its data ----------------------------------------------------------------------


def test_unsafe_rows_without_a_category_leave_the_categories_unknown(guard_files: dict[str, Path]) -> None:
    rows = load_examples(guard_files["train"], MODERATION)
    frame = pd.read_csv(guard_files["train"], keep_default_na=False)
    mask = MODERATION.known_mask(rows.labels or [])
    for gold, row_mask, (label, category) in zip(
        rows.labels or [], mask, zip(frame["label"], frame["categories"], strict=True), strict=True
    ):
        if label == "safe":
            assert gold == [] and row_mask.all()
        elif category:
            assert gold == ["unsafe", category] and row_mask.all()
        else:
            assert gold == ["unsafe"] and row_mask[0] == 1 and not row_mask[1:].any()


def test_a_category_in_the_label_column_implies_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    pd.DataFrame({"text": ["a", "b"], "label": ["hate", "safe"]}).to_csv(path, index=False)
    assert load_examples(path, MODERATION).labels == [["unsafe", "hate"], []]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            {"text": ["fine", "bad"], "label": ["safe", "unsafe"], "categories": ["", "spam"]},
            "rows.csv: row 3: unknown category 'spam' in column 'categories' (expected comma-separated",
        ),
        (
            {"text": ["fine"], "label": ["safe"], "categories": ["hate"]},
            "rows.csv: row 2: categories ['hate'] on a 'safe' row",
        ),
        (
            {"text": ["fine"], "label": ["maybe"]},
            "rows.csv: row 2: unknown label 'maybe' in column 'label'",
        ),
        ({"text": ["   "], "label": ["safe"]}, "rows.csv: row 2: empty text"),
    ],
)
def test_bad_guard_rows_get_one_line_errors(tmp_path: Path, rows: dict, expected: str) -> None:
    path = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(GuardtuneError) as error:
        load_examples(path, MODERATION)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_non_text_json_cells_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "hello", "label": "safe"}\n{"text": {"a": 1}, "label": "safe"}\n')
    with pytest.raises(
        GuardtuneError, match=r"rows.jsonl: line 2: column 'text' holds a dict \(expected text\)"
    ):
        load_examples(path, MODERATION)


def test_overall_needs_a_multi_label_task_with_that_label() -> None:
    with pytest.raises(GuardtuneError) as error:
        task_from_dict(
            {"name": "t", "mode": "single", "overall": "bad", "labels": {"safe": "", "unsafe": ""}}
        )
    assert "overall: applies to multi-label tasks only" in str(error.value)
    assert "overall: expected one of the labels" in str(error.value)


def test_categories_alone_do_not_flag_a_text() -> None:
    names = MODERATION.label_names
    scores = np.zeros((2, len(names)))
    scores[0, names.index("hate")] = 0.9  # overall off: safe despite the category
    scores[1, names.index("unsafe")] = 0.9
    scores[1, names.index("hate")] = 0.9
    assert MODERATION.decide(scores) == [[], ["unsafe", "hate"]]


def test_masked_category_loss_ignores_unknown_values() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    labels = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1]])
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]])
    weights = torch.ones(3)
    flipped = labels.clone()
    flipped[0, 1:] = 1.0  # different guesses at the unknown values
    same = multi_label_loss(logits, labels, weights, label_mask=mask)
    assert torch.equal(same, multi_label_loss(logits, flipped, weights, label_mask=mask))
    assert not torch.equal(
        multi_label_loss(logits, labels, weights), multi_label_loss(logits, flipped, weights)
    )
    # With nothing masked it is the plain mean BCE.
    full = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    torch.testing.assert_close(multi_label_loss(logits, labels, weights), full)


def test_category_metrics_count_only_rows_where_the_category_is_known() -> None:
    labels = ["unsafe", "hate"]
    gold = [["unsafe"], ["unsafe", "hate"], []]
    predicted = [["unsafe", "hate"], ["unsafe", "hate"], []]
    scores = np.array([[0.9, 0.9], [0.9, 0.8], [0.1, 0.1]])
    known = MODERATION.known_mask(gold)[:, :2]
    metrics = multi_label_metrics(labels, gold, predicted, scores, known)
    # Row 1's hate is unknown, so predicting it is no false positive.
    assert metrics["per_class"]["hate"]["precision"] == 1.0
    assert metrics["per_class"]["hate"]["known_rows"] == 2
    assert metrics["per_class"]["unsafe"]["support"] == 2
    assert metrics["fpr"] == 0.0 and metrics["n_fully_labelled"] == 2
    plain = multi_label_metrics(labels, gold, predicted, scores)
    assert plain["per_class"]["hate"]["precision"] == 0.5


# -- long inputs --------------------------------------------------------------------------------


def test_head_and_tail_keeps_both_ends() -> None:
    ids = list(range(100))
    assert head_and_tail(ids, 10) == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert head_and_tail(ids, 11) == [0, 1, 2, 3, 4, 5, 95, 96, 97, 98, 99]
    assert head_and_tail(ids[:5], 10) == ids[:5]


def test_windows_cover_the_whole_text_and_overlap(tiny_base: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    text = " ".join(f"game{i % 7} score" for i in range(60))
    windows = text_windows(tokenizer, text, budget=24)
    assert len(windows) > 3
    assert windows[0] == text[: len(windows[0])] and text.endswith(windows[-1])
    assert all(len(tokenizer(w, add_special_tokens=False)["input_ids"]) <= 24 for w in windows)
    assert text_windows(tokenizer, "short one", budget=24) == ["short one"]


def test_long_texts_keep_head_and_tail_or_take_the_most_flagged_window(
    guard_model: Path, guard_files: dict[str, Path]
) -> None:
    classifier = Classifier.load(guard_model, dtype="fp32")
    method = classifier.method
    safe = " ".join(["game fun score level"] * 12)
    unsafe = "whats ur address where do you live whats ur number"
    long_text = safe + " " + " ".join([unsafe] * 4) + " " + safe
    ids = method.encode([long_text])[0]
    assert len(ids) == method.max_length
    full = method.backbone.tokenizer(long_text)["input_ids"]
    assert ids[:5] == full[:5] and ids[-5:] == full[-5:]

    windowed = predict_scores(method, [long_text, unsafe], long_text="windows")
    pieces = text_windows(method.backbone.tokenizer, long_text, method.max_length - 1)
    each = predict_scores(method, pieces, long_text="head-tail")
    best = int(np.argmax(each[:, 0]))
    np.testing.assert_allclose(windowed[0], each[best], atol=1e-6)
    np.testing.assert_allclose(windowed[1], predict_scores(method, [unsafe])[0], atol=1e-6)
    # The window holding the unsafe request flags the whole text; head and tail alone miss it.
    head_tail = predict_scores(method, [long_text], long_text="head-tail")
    assert windowed[0, 0] > 0.5 > head_tail[0, 0]


# -- end to end ---------------------------------------------------------------------------------


def test_guard_trains_calibrates_and_evaluates_on_a_label_only_file(
    guard_model: Path, guard_files: dict[str, Path], tmp_path: Path
) -> None:
    cal = calibrate(guard_model, guard_files["val"], max_fpr=0.1, dtype="fp32")
    assert list(cal.thresholds) == ["unsafe"] and cal.achieved["unsafe"]["fpr"] <= 0.1

    metrics = evaluate(guard_model, guard_files["only_label"], tmp_path / "report", progress=False)
    assert metrics["per_class"]["unsafe"]["auprc"] > 0.9
    assert metrics["fpr"] is not None and metrics["per_class"]["unsafe"]["f1"] > 0.8
    assert metrics["per_class"]["hate"]["known_rows"] == sum(
        pd.read_csv(guard_files["only_label"])["label"] == "safe"
    )
    written = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert written["per_class"]["unsafe"] == metrics["per_class"]["unsafe"]

    with_categories = evaluate(guard_model, guard_files["test"], tmp_path / "report2", progress=False)
    assert with_categories["per_class"]["harassment"]["f1"] > 0.6

    predict_file(Classifier.load(guard_model), guard_files["test"], tmp_path / "pred.csv")
    predicted = pd.read_csv(tmp_path / "pred.csv", keep_default_na=False)
    assert {"score_unsafe", "score_hate"} <= set(predicted.columns)


def test_guard_serves_openai_moderations_with_its_categories(guard_model: Path) -> None:
    import httpx

    guards = load_guards({"mod": guard_model}, dtype="fp32")
    settings = ServeSettings()
    reference = Classifier.load(guard_model, dtype="fp32")
    texts = ["whats ur address", "game fun score"]
    with BackgroundServer(create_app(guards, settings)) as running:
        reply = httpx.post(
            running.url + "/v1/moderations",
            json={"model": "mod", "input": texts},
            trust_env=False,
            timeout=30,
        )
    assert reply.status_code == 200
    results = reply.json()["results"]
    expected = reference.predict(texts)
    for result, prediction in zip(results, expected, strict=True):
        assert set(result["categories"]) == set(MODERATION.categories)
        assert result["flagged"] == ("unsafe" in prediction.label)
        assert result["category_scores"]["hate"] == pytest.approx(prediction.scores["hate"], abs=1e-4)


def test_predict_and_eval_read_long_texts_as_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], guard_model: Path, tmp_path: Path
) -> None:
    safe = " ".join(["game fun score level"] * 12)
    unsafe = " ".join(["whats ur address where do you live whats ur number"] * 4)
    rows = tmp_path / "long.csv"
    pd.DataFrame({"text": [f"{safe} {unsafe} {safe}", "gg nice"], "label": ["unsafe", "safe"]}).to_csv(
        rows, index=False
    )
    out = tmp_path / "pred.csv"
    assert (
        run_cli(
            monkeypatch,
            "predict",
            "--model",
            guard_model,
            "--data",
            rows,
            "--out",
            out,
            "--long-text",
            "windows",
        )
        == 0
    )
    classifier = Classifier.load(guard_model)
    classifier.long_text = "windows"
    expected = classifier.predict_proba(pd.read_csv(rows)["text"].tolist())
    np.testing.assert_allclose(pd.read_csv(out)["score_unsafe"], expected[:, 0], atol=1e-5)

    capsys.readouterr()
    assert (
        run_cli(
            monkeypatch,
            "eval",
            "--model",
            guard_model,
            "--data",
            rows,
            "--out",
            tmp_path / "r",
            "--long-text",
            "all",
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: --long-text: expected one of head-tail, windows")
        and len(err.splitlines()) == 1
    )
    assert not (tmp_path / "r").exists()
