"""examples/pii: the template cross-validation split and the chat check's message set."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import load_script

from guardtune.api import train
from guardtune.backbone import load_backbone
from guardtune.classifier import Classifier
from guardtune.data.synth import list_families, template_frame, template_pools
from guardtune.data.synth.families import phrasing_key
from guardtune.errors import GuardtuneError
from guardtune.serve.chat import generate_reply
from guardtune.serve.settings import TRANSCRIPT_PREAMBLE
from guardtune.train import TrainSettings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "pii"


@pytest.mark.parametrize("task", ["pii-intent", "pii-categories"])
def test_template_cv_validates_on_train_templates_only(tmp_path: Path, task: str) -> None:
    cv = load_script(EXAMPLES / "template_cv.py")
    root = cv.split_templates(task, tmp_path, dev_share=0.25, seed=3)
    train, dev = template_pools(task, "train", templates=root), template_pools(task, "check", templates=root)
    built_in_train = {t for pool in template_pools(task, "train").values() for t in pool}
    built_in_check = {t for pool in template_pools(task, "check").values() for t in pool}
    dev_all = {t for pool in dev.values() for t in pool}
    train_all = {t for pool in train.values() for t in pool}
    # Validation comes out of the training templates; the real check templates are never read.
    assert dev_all <= built_in_train and not dev_all & built_in_check and not train_all & built_in_check
    assert not {template_frame(t) for t in dev_all} & {template_frame(t) for t in train_all}
    assert [f.name for f in list_families(task, root)] == [f.name for f in list_families(task)]


def test_add_train_templates_join_the_training_pools_only(tmp_path: Path) -> None:
    cv = load_script(EXAMPLES / "template_cv.py")
    extra = tmp_path / "candidates"
    (extra / "pii-intent").mkdir(parents=True)
    (extra / "pii-intent" / "core.yaml").write_text(
        "train:\n"
        '  asking:\n    - "which street is your school on? asking for the carpool"\n'
        '  none:\n    - "which street is the bakery quest on? asking for the carpool"\n',
        encoding="utf-8",
    )
    plain = cv.split_templates("pii-intent", tmp_path / "plain", dev_share=0.25, seed=3)
    added = cv.split_templates("pii-intent", tmp_path / "added", dev_share=0.25, seed=3, extra_root=extra)
    candidates = {
        t for spec in cv._extra_templates("pii-intent", extra).values() for p in spec.values() for t in p
    }
    # The loader accepts them (placeholders, the task's label rules) and they only add training rows:
    # the validation templates are the same with and without them.
    train = {t for pool in template_pools("pii-intent", "train", templates=added).values() for t in pool}
    assert len(candidates) == 2 and candidates <= train
    assert template_pools("pii-intent", "check", templates=added) == template_pools(
        "pii-intent", "check", templates=plain
    )
    built_in = {
        phrasing_key(t)
        for split in ("train", "check")
        for pool in template_pools("pii-intent", split).values()
        for t in pool
    }
    assert not {phrasing_key(t) for t in candidates} & built_in


def test_add_train_refuses_an_unknown_family(tmp_path: Path) -> None:
    cv = load_script(EXAMPLES / "template_cv.py")
    extra = tmp_path / "extra"
    (extra / "pii-intent").mkdir(parents=True)
    (extra / "pii-intent" / "nope.yaml").write_text("train:\n  none: [hi]\n", encoding="utf-8")
    with pytest.raises(GuardtuneError, match=r"nope\.yaml: no built-in family of that name"):
        cv.split_templates("pii-intent", tmp_path / "w", dev_share=0.25, seed=3, extra_root=extra)


def test_template_cv_setting_parser() -> None:
    cv = load_script(EXAMPLES / "template_cv.py")
    assert cv.parse_setting("long:max_steps=240,calibrate=1") == ("long", {"max_steps": 240, "calibrate": 1})
    settings = cv.settings_for("pii-categories", {"lora_r": 8, "calibrate": 1}, seed=2)
    assert settings.lora.alpha == 16 and settings.max_steps == 240 and settings.seed == 2
    smoothed = cv.settings_for("pii-intent", {"label_smoothing": 0.2, "lora_dropout": 0.1}, seed=0)
    assert smoothed.label_smoothing == 0.2 and smoothed.lora.dropout == 0.1 and smoothed.lora.r == 16
    quickstart = cv.settings_for("pii-intent", {}, seed=0)
    assert quickstart.label_smoothing == 0.1 and quickstart.readout == "eos"  # the quickstart's
    assert cv.settings_for("pii-categories", {}, seed=0).readout == "last"
    _, overrides = cv.parse_setting("last:readout=last")
    assert cv.settings_for("pii-intent", overrides, seed=0).readout == "last"
    with pytest.raises(GuardtuneError, match="max_steps: expected a number, found 'a'"):
        cv.parse_setting("x:max_steps=a")
    with pytest.raises(GuardtuneError, match="unknown key 'steps'"):
        cv.parse_setting("x:steps=3")


def test_styledev_is_labelled_like_the_generator() -> None:
    rows = pd.read_csv(EXAMPLES / "styledev.csv", keep_default_na=False)
    families = {f.name: f for f in list_families("pii-intent")}
    assert list(rows.columns) == ["text", "label", "family"] and len(rows) == 480
    assert set(rows["family"]) == set(families)
    for name, group in rows.groupby("family"):
        # Each row carries a label its family's generator writes (one-label families only theirs).
        assert set(group["label"]) <= {c for c, share in families[name].class_shares.items() if share > 0}
    texts = rows["text"].str.strip().str.lower()
    assert texts.str.len().min() > 0 and not texts.duplicated().any()


def test_template_cv_scores_each_also_file_with_every_model(tmp_path: Path, tiny_base: str) -> None:
    cv = load_script(EXAMPLES / "template_cv.py")
    styledev = EXAMPLES / "styledev.csv"
    result = cv.run(
        "pii-intent", "tiny", {"max_steps": 2}, 0, tmp_path, load_backbone(tiny_base), also=[styledev]
    )
    figures = result["also"]["styledev.csv"]
    reports = tmp_path / "tiny" / "seed0"
    written = json.loads((reports / "also-styledev" / "metrics.json").read_text(encoding="utf-8"))
    assert figures["dev_macro_f1"] == written["macro_f1"] and written["n"] == 480
    assert set(figures["family_accuracy"]) == {f.name for f in list_families("pii-intent")}
    # The generated dev split (held-out training templates) is still scored on its own.
    dev = json.loads((reports / "dev" / "metrics.json").read_text(encoding="utf-8"))
    assert dev["macro_f1"] == result["dev_macro_f1"] and dev["n"] != 480


def test_chat_check_messages() -> None:
    chat = load_script(EXAMPLES / "chat_check.py")
    rows = chat.check_rows(20, seed=1)
    assert (rows["label"] == "asking").sum() == 20 and (rows["label"] == "giving").sum() == 20
    requests = rows[rows["expected"] == "answer"]
    assert len(requests) == 20 and set(requests["family"]) == {"assistant-requests"}
    assert set(rows.loc[rows["expected"] == "refuse", "label"]) == {"asking", "giving"}


def test_chat_check_writes_a_withheld_reply_again_with_the_guards_scores(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    chat = load_script(EXAMPLES / "chat_check.py")
    fast = TrainSettings(max_steps=2, batch_size=8, max_length=160, dtype="fp32")
    train("pii-intent", toy_files["train"], tmp_path / "guard", base=tiny_base, settings=fast)
    replies, scores = chat.withheld_replies(tmp_path / "guard", ["gg nice map", "whats ur snap"], 5)
    guard = Classifier.load(tmp_path / "guard")
    # The server's reply to the same message: the text the guard withheld.
    served = generate_reply(
        guard.method.backbone, [{"role": "user", "content": "gg nice map"}], 5, TRANSCRIPT_PREAMBLE
    )
    assert replies[0] == served.text and len(replies) == 2
    assert set(json.loads(scores[1])) == {"none", "asking", "giving"}


def test_reply_screen_requests_come_from_training_templates_in_two_fixed_halves() -> None:
    screen = load_script(EXAMPLES / "reply_screen.py")
    rows = screen.request_rows(2, seed=5)
    train_pool = set(template_pools("pii-intent", "train", family="assistant-requests")["none"])
    assert set(rows["template"]) == train_pool and len(rows) == 2 * len(train_pool)
    # A template's half is its own (a hash of its text): adding another template never moves it.
    assert screen.template_half("what is the capital of {country}?") == "A"
    assert screen.template_half("why is the sky blue?") == "B"
    assert set(rows["half"]) == {"A", "B"}
    assert rows.equals(screen.request_rows(2, seed=5))


def test_reply_screen_scores_every_reply_with_every_guard(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    screen = load_script(EXAMPLES / "reply_screen.py")
    guards = [tmp_path / "guard0", tmp_path / "guard1"]
    for seed, guard in enumerate(guards):
        fast = TrainSettings(max_steps=2, batch_size=8, max_length=160, dtype="fp32", seed=seed)
        train("pii-intent", toy_files["train"], guard, base=tiny_base, settings=fast)
    out = tmp_path / "screen"
    argv = ["reply_screen.py", "--models", *map(str, guards), "--out", str(out), "--max-new-tokens", "3"]
    monkeypatch.setattr(sys, "argv", [*argv, "--per-template", "1"])
    screen.main()
    replies = (out / "replies.csv").read_text(encoding="utf-8")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    scores = pd.read_csv(out / "scores.csv", keep_default_na=False)
    for guard in guards:
        shares = summary[str(guard)]
        assert 0 <= shares["A"] <= 1 and 0 <= shares["B"] <= 1 and shares["replies"] == len(scores)
        assert set(scores[f"label:{guard}"]) <= {"none", "asking", "giving"}
    # A second run with the same arguments reads the replies back instead of writing them again ...
    generate = screen.base_replies
    monkeypatch.setattr(screen, "base_replies", lambda *args: pytest.fail("replies written twice"))
    screen.main()
    assert (out / "replies.csv").read_text(encoding="utf-8") == replies
    # ... and one with other arguments writes them again.
    monkeypatch.setattr(screen, "base_replies", generate)
    monkeypatch.setattr(sys, "argv", [*argv, "--per-template", "2"])
    screen.main()
    assert len(pd.read_csv(out / "replies.csv")) == 2 * len(scores)
