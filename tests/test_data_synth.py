"""Synthetic PII data: shape, determinism, label validity, balance, families and held-out templates."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import pandas as pd
import pytest

from guardtune.data.synth import (
    SYNTH_TASKS,
    Split,
    generate,
    list_families,
    min_rows,
    template_fields,
    template_frame,
    template_pools,
)
from guardtune.data.synth.families import load_families
from guardtune.data.synth.fillers import FIELD_CATEGORY, PERSONAL_FIELDS, fillers
from guardtune.data.synth.style import Piece, apply_style
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
    """One 1,000-row frame per task and split, shared so the suite stays fast."""
    return {(t, s): generate(t, 1000, seed=7, split=s) for t in SYNTH_TASKS for s in SPLITS}


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
@pytest.mark.parametrize("extra", [0, 1, 2, 7, 101])
def test_exact_row_count_and_columns(task: str, extra: int) -> None:
    n = len(list_families(task)) + extra
    frame = generate(task, n, seed=0)
    assert len(frame) == n
    assert list(frame.columns) == ["text", LABEL_COLUMN[task], "family"]
    assert frame["text"].map(lambda t: isinstance(t, str) and t.strip() == t and t != "").all()
    # Every family gives at least one row, however small n is.
    assert set(frame["family"]) == {f.name for f in list_families(task)}


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


@pytest.mark.parametrize("task", SYNTH_TASKS)
@pytest.mark.parametrize("split", SPLITS)
def test_family_and_class_shares_follow_the_files(
    frames: dict[tuple[str, str], pd.DataFrame], task: str, split: Split
) -> None:
    frame = frames[task, split]
    label_column = LABEL_COLUMN[task]
    for info in list_families(task):
        rows = frame[frame["family"] == info.name]
        assert len(rows) / len(frame) == pytest.approx(info.share, abs=0.002), info.name
        if task == "pii-intent":
            for label, share in info.class_shares.items():
                assert (rows[label_column] == label).sum() / len(frame) == pytest.approx(share, abs=0.002)


@pytest.mark.parametrize("split", SPLITS)
def test_intent_class_balance(frames: dict[tuple[str, str], pd.DataFrame], split: Split) -> None:
    shares = frames["pii-intent", split]["label"].value_counts(normalize=True)
    totals: dict[str, float] = {}
    for info in list_families("pii-intent"):
        for label, share in info.class_shares.items():
            totals[label] = totals.get(label, 0.0) + share
    assert set(totals) == {"none", "asking", "giving"}
    for label, target in totals.items():
        assert shares[label] == pytest.approx(target, abs=0.01)


def test_every_family_and_intent_class_present_from_one_row_per_family() -> None:
    n = len(list_families("pii-intent"))
    for seed in range(5):
        frame = generate("pii-intent", n, seed=seed)
        assert set(frame["label"]) == {"none", "asking", "giving"}
        assert frame["family"].is_unique


@pytest.mark.parametrize("split", SPLITS)
def test_category_group_balance(frames: dict[tuple[str, str], pd.DataFrame], split: Split) -> None:
    frame = frames["pii-categories", split]
    sizes = frame["labels"].map(lambda c: len(c.split(",")) if c else 0)
    # A multi row can lose a category to a duplicate draw and a safe row holds none, so the three
    # groups keep close to their shares in the family files.
    shares = {"safe": 0.0, "one": 0.0, "multi": 0.0}
    for info in list_families("pii-categories"):
        for group, share in info.class_shares.items():
            shares[group] += share
    assert (sizes == 0).mean() == pytest.approx(shares["safe"], abs=0.02)
    assert (sizes == 1).mean() == pytest.approx(shares["one"], abs=0.04)
    assert (sizes >= 2).mean() == pytest.approx(shares["multi"], abs=0.04)
    assert (sizes >= 3).any()
    for family in frame["family"].unique():
        singles = frame["labels"][(sizes == 1) & (frame["family"] == family)].value_counts()
        assert set(singles.index) == {"S1", "S2", "S3", "S4", "S5"}, family


@pytest.mark.parametrize("task", SYNTH_TASKS)
def test_train_and_check_templates_disjoint(task: str) -> None:
    train = template_pools(task, "train")
    check = template_pools(task, "check")
    assert train.keys() == check.keys()
    train_all = {t for pool in train.values() for t in pool}
    check_all = {t for pool in check.values() for t in pool}
    assert not train_all & check_all
    # Frames, not just placeholder values, must differ: compare with every value blanked out.
    assert not {template_frame(t) for t in train_all} & {template_frame(t) for t in check_all}


def test_every_family_has_both_splits_for_every_class() -> None:
    for task in SYNTH_TASKS:
        for family in load_families(task).values():
            assert family.pools["train"].keys() == family.pools["check"].keys(), family.name
            for split in SPLITS:
                for cls, pool in family.pools[split].items():
                    assert len(set(pool)) == len(pool), (family.name, split, cls)


def test_intent_template_counts() -> None:
    for label, pool in template_pools("pii-intent", "train").items():
        assert len(pool) >= 40, label
    for label, pool in template_pools("pii-intent", "check").items():
        assert len(pool) >= 15, label


@pytest.mark.parametrize("task", SYNTH_TASKS)
@pytest.mark.parametrize("split", SPLITS)
def test_every_placeholder_has_a_filler(task: str, split: Split) -> None:
    for key, pool in template_pools(task, split).items():
        for template in pool:
            fields = set(template_fields(template)) - ({"body"} if key == "frames" else set())
            assert fields <= fillers().keys(), template


def test_intent_giving_templates_give_and_none_templates_do_not() -> None:
    for split in SPLITS:
        pools = template_pools("pii-intent", split)
        for template in pools["giving"]:
            assert set(template_fields(template)) & PERSONAL_FIELDS, template
        for template in pools["none"]:
            assert not set(template_fields(template)) & PERSONAL_FIELDS, template


@pytest.mark.parametrize("split", SPLITS)
def test_category_templates_match_their_codes(split: Split) -> None:
    def categories(template: str) -> set[str]:
        return {FIELD_CATEGORY[f] for f in template_fields(template) if f in FIELD_CATEGORY}

    pools = template_pools("pii-categories", split)
    for template in pools["safe"] + pools["frames"]:
        assert categories(template) == set(), template
    for code in ("S1", "S2", "S3", "S4", "S5"):
        for template in pools[code]:
            assert categories(template) == {code}, template
    for template in pools["multi"]:
        assert len(categories(template)) >= 2, template


@pytest.mark.parametrize("task", SYNTH_TASKS)
@pytest.mark.parametrize("split", SPLITS)
def test_low_duplicate_rate(frames: dict[tuple[str, str], pd.DataFrame], task: str, split: Split) -> None:
    frame = frames[task, split]
    # Greetings and one-word replies repeat in real chat too; every other family avoids repeats.
    repeating = {f.name for f in load_families(task).values() if not f.unique}
    assert frame[~frame["family"].isin(repeating)]["text"].duplicated().mean() < 0.01


def test_pii_values_survive_styling(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    for split in SPLITS:
        frame = frames["pii-categories", split]
        for text, cell, family in zip(frame["text"], frame["labels"], frame["family"], strict=True):
            codes = set(cell.split(",")) if cell else set()
            has_ip = bool(IPV4.search(text) or IPV6.search(text))
            assert has_ip == ("S2" in codes), text
            if "S5" in codes:
                assert CARD.search(text), text
            if not codes and family == "chat":
                # Elsewhere IBANs and account numbers are card-like digit runs on purpose.
                assert not CARD.search(text), text


def test_intent_contact_values_intact(frames: dict[tuple[str, str], pd.DataFrame]) -> None:
    frame = frames["pii-intent", "train"]
    # obfuscated-giving writes addresses out ("jo at gmail dot com") on purpose.
    plain = frame[frame["family"] != "obfuscated-giving"]
    emails = plain["text"].str.extract(r"(\S+@\S+)")[0].dropna()
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
        ("moderation", 10, "train", "known: pii-categories, pii-intent"),
        ("nope", 10, "train", "known: pii-categories, pii-intent"),
        ("pii-intent", 0, "train", "n:"),
        (
            "pii-intent",
            min_rows("pii-intent") - 1,
            "train",
            r"n: expected a whole number of rows >= \d+ \(one per family",
        ),
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


def test_same_seed_gives_the_same_rows_in_any_process() -> None:
    # Faker providers that build lists from sets would follow PYTHONHASHSEED; the rows must not.
    code = (
        "import hashlib, pandas as pd\n"
        "from guardtune.data.synth import generate\n"
        "frames = [generate(t, 300, seed=5, split=s) for t in ('pii-intent', 'pii-categories')"
        " for s in ('train', 'check')]\n"
        "print(hashlib.sha256(pd.concat(frames).to_csv().encode()).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(digests) == 1


@pytest.mark.parametrize("register", ["chat", "short", "formal"])
def test_style_never_changes_a_value(register: str) -> None:
    values = ["5 . 5  5 - 0 1", "DE89 3704 0044 0532 0130 00", "Jo  O'Neil", "ab\ncd"]
    for seed in range(200):
        rng = random.Random(seed)
        value = values[seed % len(values)]
        pieces = [Piece("Hey,  my number is  "), Piece(value, value=True), Piece(" , OK ?")]
        assert value in apply_style(pieces, register, rng)


def test_a_long_number_is_longer_than_any_phone_or_card_number() -> None:
    from faker import Faker

    from guardtune.data.synth.context import RowContext

    ctx = RowContext(rng=random.Random(4), fake=Faker("en_US"), locale="en_US")
    values = [fillers()["long_number"](ctx) for _ in range(300)]
    assert all(re.fullmatch(r"[1-9][0-9]{19,44}", v) for v in values), values[:5]
    # Both shapes come out: a power of ten, as a base writes one when it loses count, and digits.
    assert any(set(v[1:]) == {"0"} for v in values) and any(set(v[1:]) != {"0"} for v in values)
    assert "long_number" not in PERSONAL_FIELDS
