"""Synthetic PII chat data: shape, determinism, label validity, balance and held-out templates."""

from __future__ import annotations

import random
import re

import pandas as pd
import pytest

from guardtune.data import synth
from guardtune.data.synth import (
    SYNTH_TASKS,
    Split,
    generate,
    template_fields,
    template_pools,
)
from guardtune.errors import GuardtuneError
from guardtune.task import load_task

SPLITS: tuple[Split, ...] = ("train", "check")
LABEL_COLUMN = {"pii-intent": "label", "pii-categories": "labels"}
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
IPV6 = re.compile(r"\b[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){7}\b", re.IGNORECASE)
# A card number, allowing the space or dash grouping the generator uses.
CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")


@pytest.fixture(scope="module")
def frames() -> dict[tuple[str, str], pd.DataFrame]:
    """One 600-row frame per task and split, shared so the suite stays fast."""
    return {(t, s): generate(t, 600, seed=7, split=s) for t in SYNTH_TASKS for s in SPLITS}


@pytest.mark.parametrize("task", SYNTH_TASKS)
@pytest.mark.parametrize("split", SPLITS)
def test_same_seed_gives_same_frame(task: str, split: Split) -> None:
    first = generate(task, 80, seed=3, split=split)
    random.seed(999)  # global random state must not leak into the generator
    second = generate(task, 80, seed=3, split=split)
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.parametrize("task", SYNTH_TASKS)
def test_different_seeds_give_different_data(task: str) -> None:
    a = generate(task, 80, seed=1)
    b = generate(task, 80, seed=2)
    assert set(a["text"]) != set(b["text"])
    assert len(set(a["text"]) & set(b["text"])) < 10


@pytest.mark.parametrize("task", SYNTH_TASKS)
@pytest.mark.parametrize("n", [1, 2, 3, 7, 101])
def test_exact_row_count_and_columns(task: str, n: int) -> None:
    frame = generate(task, n, seed=0)
    assert len(frame) == n
    assert list(frame.columns) == ["text", LABEL_COLUMN[task]]
    assert frame["text"].map(lambda t: isinstance(t, str) and t.strip() == t and t != "").all()


def test_intent_labels_are_the_task_labels(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    names = set(load_task("pii-intent").label_names)
    for split in SPLITS:
        assert set(frames["pii-intent", split]["label"]) == names


def test_category_codes_valid_and_canonical(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    names = load_task("pii-categories").label_names
    for split in SPLITS:
        for cell in frames["pii-categories", split]["labels"]:
            codes = cell.split(",") if cell else []
            assert all(code in names for code in codes), cell
            assert codes == sorted(set(codes), key=names.index), cell


@pytest.mark.parametrize("split", SPLITS)
def test_intent_class_balance(frames: dict[tuple[str, str], pd.DataFrame], split: Split) -> None:
    shares = frames["pii-intent", split]["label"].value_counts(normalize=True)
    for label, target in {"none": 0.40, "asking": 0.30, "giving": 0.30}.items():
        assert shares[label] == pytest.approx(target, abs=0.03)


def test_every_intent_class_present_from_three_rows() -> None:
    for seed in range(5):
        assert set(generate("pii-intent", 3, seed=seed)["label"]) == {"none", "asking", "giving"}


@pytest.mark.parametrize("split", SPLITS)
def test_category_group_balance(frames: dict[tuple[str, str], pd.DataFrame], split: Split) -> None:
    sizes = frames["pii-categories", split]["labels"].map(lambda c: len(c.split(",")) if c else 0)
    assert (sizes == 0).mean() == pytest.approx(0.35, abs=0.04)
    assert (sizes == 1).mean() == pytest.approx(0.40, abs=0.04)
    assert (sizes >= 2).mean() == pytest.approx(0.25, abs=0.04)
    assert (sizes >= 3).any()
    singles = frames["pii-categories", split]["labels"][sizes == 1].value_counts()
    assert set(singles.index) == {"S1", "S2", "S3", "S4", "S5"}
    assert singles.max() - singles.min() <= 2


@pytest.mark.parametrize("task", SYNTH_TASKS)
def test_train_and_check_templates_disjoint(task: str) -> None:
    train = template_pools(task, "train")
    check = template_pools(task, "check")
    assert train.keys() == check.keys()
    train_all = {t for pool in train.values() for t in pool}
    check_all = {t for pool in check.values() for t in pool}
    assert not train_all & check_all
    # Frames, not just placeholder values, must differ: compare with every value stripped out.
    frame = re.compile(r"\{[a-z_0-9]+\}")
    assert not {frame.sub("{}", t) for t in train_all} & {frame.sub("{}", t) for t in check_all}


def test_intent_template_counts() -> None:
    for label, pool in template_pools("pii-intent", "train").items():
        assert len(pool) >= 40, label
        assert len(set(pool)) == len(pool), label
    for label, pool in template_pools("pii-intent", "check").items():
        assert len(pool) >= 15, label
        assert len(set(pool)) == len(pool), label


@pytest.mark.parametrize("task", SYNTH_TASKS)
@pytest.mark.parametrize("split", SPLITS)
def test_every_placeholder_has_a_filler(task: str, split: Split) -> None:
    for pool in template_pools(task, split).values():
        for template in pool:
            assert set(template_fields(template)) <= synth._FILLERS.keys(), template


@pytest.mark.parametrize("split", SPLITS)
def test_category_templates_match_their_codes(split: Split) -> None:
    def categories(template: str) -> set[str]:
        fields = template_fields(template)
        return {synth._FIELD_CATEGORY[f] for f in fields if f in synth._FIELD_CATEGORY}

    pools = template_pools("pii-categories", split)
    for template in pools["safe"]:
        assert categories(template) == set(), template
    for code in ("S1", "S2", "S3", "S4", "S5"):
        for template in pools[code]:
            assert categories(template) == {code}, template
    for template in pools["multi"]:
        assert len(categories(template)) >= 2, template


@pytest.mark.parametrize("task", SYNTH_TASKS)
@pytest.mark.parametrize("split", SPLITS)
def test_low_duplicate_rate(frames: dict[tuple[str, str], pd.DataFrame], task: str, split: Split) -> None:
    assert frames[task, split]["text"].duplicated().mean() < 0.01


def test_pii_values_survive_styling(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    for split in SPLITS:
        frame = frames["pii-categories", split]
        for text, cell in zip(frame["text"], frame["labels"], strict=True):
            codes = set(cell.split(",")) if cell else set()
            has_ip = bool(IPV4.search(text) or IPV6.search(text))
            assert has_ip == ("S2" in codes), text
            if "S5" in codes:
                assert CARD.search(text), text
            if not codes:
                assert not CARD.search(text), text


def test_intent_contact_values_intact(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    giving = frames["pii-intent", "train"]
    emails = giving["text"].str.extract(r"(\S+@\S+)")[0].dropna()
    assert len(emails) > 10
    assert emails.str.match(r"^[\w.+-]+@[\w-]+(\.[\w-]+)+[.,!?]*$").all(), emails.tolist()


def test_style_layer_adds_variety(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    texts = pd.concat([frames["pii-intent", s]["text"] for s in SPLITS])
    assert texts.str.contains(r"\bu\b|\bur\b").any()
    assert texts.str.contains(r"\b(?:lol|ngl|fr|bro)\b").any()
    assert texts.str.contains(r"[\U0001F300-\U0001FAFF]").any()
    assert (texts == texts.str.lower()).mean() > 0.3
    assert (texts != texts.str.lower()).mean() > 0.1


@pytest.mark.parametrize(
    ("task", "n", "split", "match"),
    [
        ("moderation", 10, "train", "known: pii-intent, pii-categories"),
        ("nope", 10, "train", "known: pii-intent, pii-categories"),
        ("pii-intent", 0, "train", "n:"),
        ("pii-categories", -5, "train", "n:"),
        ("pii-intent", 10, "test", "split:"),
    ],
)
def test_bad_arguments_raise_one_line_error(task: str, n: int, split: str, match: str) -> None:
    with pytest.raises(GuardtuneError, match=match) as info:
        generate(task, n, seed=0, split=split)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_template_pools_rejects_unknown_task() -> None:
    with pytest.raises(GuardtuneError, match="known"):
        template_pools("moderation", "train")
