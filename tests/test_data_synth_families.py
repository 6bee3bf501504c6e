"""Template families as files: listing, selecting, adding a family, and one-line errors for bad files."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

from guardtune.data.synth import generate, list_families, min_rows
from guardtune.errors import GuardtuneError

BUILT_IN = Path(str(resources.files("guardtune.data.synth").joinpath("templates")))
MINIMAL_SHORT = """\
family: short
description: one-word replies
style: short
rows: {none: 1}
train:
  none: ["ok", "gg"]
check:
  none: ["yup"]
"""


def _templates(tmp_path: Path, task: str = "pii-intent", **files: str) -> Path:
    """A template folder with ``task``'s built-in families plus ``files`` (name -> YAML text)."""
    root = tmp_path / "templates"
    shutil.copytree(BUILT_IN / task, root / task)
    for name, text in files.items():
        (root / task / f"{name}.yaml").write_text(text, encoding="utf-8")
    return root


def test_list_families_names_every_file_with_shares_summing_to_one() -> None:
    for task in ("pii-intent", "pii-categories"):
        families = list_families(task)
        names = sorted(p.stem for p in (BUILT_IN / task).glob("*.yaml") if not p.stem.startswith("_"))
        assert sorted(f.name for f in families) == names
        assert sum(f.share for f in families) == pytest.approx(1.0)
        assert all(f.description and f.templates["train"] and f.templates["check"] for f in families)


def test_generate_one_family_only() -> None:
    frame = generate("pii-intent", 30, seed=0, families=["short", "indirect-asking"])
    assert set(frame["family"]) == {"short", "indirect-asking"}
    assert set(frame.loc[frame["family"] == "indirect-asking", "label"]) == {"asking"}
    assert set(frame.loc[frame["family"] == "short", "label"]) == {"none"}


def test_a_family_is_added_by_adding_a_file(tmp_path: Path) -> None:
    extra = """\
family: trivia
description: quiz questions that ask for nothing personal
rows: {none: 0.5}
train:
  none: ["which planet is the biggest?", "name a mammal that can fly"]
check:
  none: ["what is the longest river?"]
"""
    root = _templates(tmp_path, trivia=extra)
    names = [f.name for f in list_families("pii-intent", root)]
    assert "trivia" in names
    frame = generate("pii-intent", 200, seed=1, templates=root)
    trivia = frame[frame["family"] == "trivia"]
    assert len(trivia) == pytest.approx(200 * 0.5 / 1.5, abs=1)
    assert set(trivia["label"]) == {"none"}
    check = generate("pii-intent", 20, seed=1, split="check", templates=root, families=["trivia"])
    # At most one typo per message, so one of the two words survives the style layer.
    assert check["text"].str.lower().str.contains("river|longest").all()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("family: short\nrows: {none: 1\n", r"short\.yaml: line \d+: not valid YAML"),
        (
            MINIMAL_SHORT.replace("style: short", "style: shouting"),
            r"short\.yaml: style\.0: Input should be 'chat', 'short' or 'formal'",
        ),
        (MINIMAL_SHORT + "colour: blue\n", r"short\.yaml: colour: Extra inputs are not permitted"),
        (
            MINIMAL_SHORT.replace('["ok", "gg"]', '["ok {mood}"]'),
            r"short\.yaml: train\.none\[0\]: .*unknown placeholder \{mood\}",
        ),
        (
            MINIMAL_SHORT.replace('["ok", "gg"]', '["ok {"]'),
            r"short\.yaml: train\.none\[0\]: .*not a valid template",
        ),
        (
            MINIMAL_SHORT.replace("rows: {none: 1}", "rows: {maybe: 1}"),
            r"short\.yaml: rows\.maybe: unknown class",
        ),
        (MINIMAL_SHORT.replace("family: short", "family: tiny"), r"short\.yaml: family: expected 'short'"),
        (
            MINIMAL_SHORT.replace('["ok", "gg"]', '["ok {email}"]'),
            r"train\.none\[0\]: .*cannot hold a personal value \(\{email\}\)",
        ),
        (MINIMAL_SHORT.replace('check:\n  none: ["yup"]', "check: {}"), r"short\.yaml: check\.none: missing"),
        (
            MINIMAL_SHORT.replace('["yup"]', '["gg"]'),
            r"check\.none\[0\]: 'gg' has the phrasing of .*train\.none",
        ),
    ],
)
def test_bad_family_file_gets_one_line_naming_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    root = _templates(tmp_path, short=text)
    with pytest.raises(GuardtuneError, match=match) as info:
        list_families("pii-intent", root)
    assert "\n" not in str(info.value)
    assert str(root / "pii-intent" / "short.yaml") in str(info.value)


def test_giving_template_without_a_personal_value_is_a_missing_placeholder(tmp_path: Path) -> None:
    text = """\
family: leaks
description: giving without a value
rows: {giving: 1}
train:
  giving: ["here is my number"]
check:
  giving: ["my number, take it"]
"""
    with pytest.raises(GuardtuneError, match=r"leaks\.yaml: train\.giving\[0\]: .*missing placeholder"):
        list_families("pii-intent", _templates(tmp_path, leaks=text))


def test_category_clause_with_the_wrong_category_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    shutil.copytree(BUILT_IN / "pii-categories", root / "pii-categories")
    path = root / "pii-categories" / "chat.yaml"
    path.write_text(path.read_text().replace('"my ip is {ip}"', '"my ip is {phone}"'), encoding="utf-8")
    with pytest.raises(GuardtuneError, match=r"chat\.yaml: train\.S2\[0\]: .*needs S2 values and no others"):
        list_families("pii-categories", root)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"families": ["nope"]},
            r"family: unknown pii-intent family 'nope' \(known: assistant-replies, assistant-requests, core",
        ),
        ({"families": []}, r"family: unknown pii-intent family \(none given\)"),
        ({"n": 2, "families": None}, rf"n: expected a whole number of rows >= {min_rows('pii-intent')}"),
    ],
)
def test_bad_generate_arguments(kwargs: dict, match: str) -> None:
    args = {"n": 50, **kwargs}
    with pytest.raises(GuardtuneError, match=match):
        generate("pii-intent", seed=0, **args)


def test_cli_lists_families_and_writes_the_family_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(monkeypatch, "data", "synth", "--task", "pii-intent", "--list-families") == 0
    listed = capsys.readouterr().out
    for info in list_families("pii-intent"):
        assert info.name in listed
    out = tmp_path / "short.csv"
    code = run_cli(
        monkeypatch, "data", "synth", "--task", "pii-intent", "--n", "12", "--out", out, "--family", "short"
    )
    assert code == 0
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == ["text", "label", "family"]
    assert set(frame["family"]) == {"short"}


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--task", "pii-intent", "--n", "10", "--family", "nope"], "unknown pii-intent family 'nope'"),
        (["--task", "moderation", "--list-families"], "has no synthetic generator"),
        (
            ["--task", "pii-intent", "--n", "3"],
            f"n: expected a whole number of rows >= {min_rows('pii-intent')}",
        ),
        (["--task", "pii-intent"], "--n and --out are required"),
    ],
)
def test_cli_bad_synth_arguments_exit_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    match: str,
) -> None:
    full = [*args, "--out", tmp_path / "x.csv"] if "--n" in args else args
    assert run_cli(monkeypatch, "data", "synth", *full) != 0
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert match in err
    assert not (tmp_path / "x.csv").exists()


def test_context_lines_join_training_rows_of_a_single_label_family_only(tmp_path: Path) -> None:
    chatter = """\
family: chatter
description: everyday lines that other families borrow as context
rows: {none: 0.0001}
train:
  none: ["zqx the raid starts soon"]
check:
  none: ["zqx the patch is out"]
"""
    leaks = """\
family: leaks
description: an e-mail address given, half the time beside a line of chatter
rows: {giving: 0.5}
context: 0.5
context_from: chatter
connectors: [" | "]
train:
  giving: ["mail me at {email}"]
check:
  giving: ["write to {email}"]
"""
    root = _templates(tmp_path, chatter=chatter, leaks=leaks)
    train = generate("pii-intent", 300, seed=2, templates=root, families=["leaks"])
    with_context = train["text"].str.contains("zqx")
    assert 0.35 < with_context.mean() < 0.65 and set(train["label"]) == {"giving"}
    # Before or after the message, joined by the family's connector; the label stays the message's.
    joined = train.loc[with_context, "text"]
    assert joined.str.contains(" | ").all()
    assert joined.str.lower().str.startswith("zqx").any() and joined.str.lower().str.endswith("soon").any()
    check = generate("pii-intent", 100, seed=2, split="check", templates=root, families=["leaks"])
    assert not check["text"].str.contains("zqx").any()
    # With context 0 the same seed writes the same rows as a file without the context keys.
    off = _templates(tmp_path / "off", chatter=chatter, leaks=leaks.replace("context: 0.5", "context: 0.0"))
    without = "\n".join(line for line in leaks.splitlines() if not line.startswith(("context", "connectors")))
    plain = _templates(tmp_path / "plain", chatter=chatter, leaks=without + "\n")
    for split in ("train", "check"):
        frames = [generate("pii-intent", 200, seed=2, split=split, templates=root) for root in (off, plain)]
        pd.testing.assert_frame_equal(*frames)


@pytest.mark.parametrize(
    ("task", "name", "extra", "match"),
    [
        (
            "pii-intent",
            "short",
            "context_from: nowhere\n",
            r"context_from: expected a family .*found 'nowhere'",
        ),
        (
            "pii-intent",
            "short",
            "context: 0.2\ncontext_from: indirect-asking\n",
            r"with a train\.none pool \(assistant-replies, .*core, .*\), found 'indirect-asking'",
        ),
        (
            "pii-intent",
            "indirect-asking",
            "context: 0.2\n",
            r"train\.none pool .*found unset \(the family itself, 'indirect-asking'\)",
        ),
        ("pii-categories", "chat", "context_from: chat\n", r"context_from: only single-label tasks"),
    ],
)
def test_bad_context_source_is_one_line(tmp_path: Path, task: str, name: str, extra: str, match: str) -> None:
    text = (BUILT_IN / task / f"{name}.yaml").read_text(encoding="utf-8")
    root = _templates(tmp_path, task, **{name: text.replace("\ntrain:", f"\n{extra}train:", 1)})
    with pytest.raises(GuardtuneError, match=match) as info:
        list_families(task, root)
    assert "\n" not in str(info.value) and f"{name}.yaml" in str(info.value)
