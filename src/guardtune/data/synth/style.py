"""The style layer: make a rendered template look typed by a person, never touching a value.

Three registers, chosen per family file:

* ``chat``: slang, dropped apostrophes and punctuation, a typo, case changes, filler words, emoji;
* ``short``: for one- and two-word messages: case, stretched letters (``hiii``), punctuation, emoji;
* ``formal``: business text kept as written, line breaks included; only case and spacing vary a little.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from guardtune.validation import parse

Register = Literal["chat", "short", "formal"]
REGISTERS: tuple[str, ...] = ("chat", "short", "formal")


@dataclass
class Piece:
    """A run of message text; ``value`` runs hold filled-in values that styling must not alter."""

    text: str
    value: bool = False


WORD = re.compile(r"[A-Za-z']+")


def _as_strings(value: Any) -> Any:
    # YAML reads some words as other types (``no`` as false, ``1`` as a number); they are words here.
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value


Words = Annotated[dict[str, str], BeforeValidator(_as_strings)]


class _ChatWords(BaseModel):
    """``templates/style.yaml``: the chat register's slang and filler words."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slang: Words = Field(description="Word -> how it is written in chat (you -> u).")
    slang_phrases: Words = Field(description="Phrase -> its chat form (going to -> gonna).")
    prefixes: tuple[str, ...] = Field(description="Fillers put before a message.")
    suffixes: tuple[str, ...] = Field(description="Fillers put after a message.")
    emoji: tuple[str, ...] = Field(description="Emoji added to a message.")


@cache
def _chat_words() -> _ChatWords:
    where = "guardtune/data/synth/templates/style.yaml"
    raw: Any = yaml.safe_load(
        resources.files("guardtune.data.synth")
        .joinpath("templates", "style.yaml")
        .read_text(encoding="utf-8")
    )
    return parse(_ChatWords, raw, where)


def chat_filler_words() -> frozenset[str]:
    """The words the chat register adds before or after a message (``lol``, ``pls``, ...)."""
    chat = _chat_words()
    return frozenset(w for part in chat.prefixes + chat.suffixes for w in re.findall(r"[a-z0-9]+", part))


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _style_literal(text: str, rng: random.Random, opts: dict[str, bool]) -> str:
    if opts["slang"]:
        chat = _chat_words()
        for phrase, short in chat.slang_phrases.items():
            if rng.random() < 0.8:
                text = re.sub(rf"\b{phrase}\b", short, text, flags=re.IGNORECASE)
        text = WORD.sub(
            lambda m: (
                chat.slang[m.group(0).lower()]
                if m.group(0).lower() in chat.slang and rng.random() < 0.75
                else m.group(0)
            ),
            text,
        )
    if opts["no_apostrophes"]:
        text = text.replace("'", "").replace("\u2019", "")
    if opts["no_punct"]:
        text = re.sub(r"[.,!?;:]", "", text)
    return text


def _chat(pieces: list[Piece], rng: random.Random) -> str:
    opts = {
        "slang": rng.random() < 0.5,
        "no_apostrophes": rng.random() < 0.45,
        "no_punct": rng.random() < 0.25,
    }
    out = [p if p.value else Piece(_style_literal(p.text, rng, opts), value=False) for p in pieces]
    if rng.random() < 0.15:
        # One typo per message at most, in a literal word long enough to still be readable.
        spots = [
            (i, m)
            for i, p in enumerate(out)
            if not p.value
            for m in WORD.finditer(p.text)
            if len(m.group(0)) >= 4 and "'" not in m.group(0)
        ]
        if spots:
            i, m = rng.choice(spots)
            text = out[i].text
            out[i] = Piece(text[: m.start()] + _typo(m.group(0), rng) + text[m.end() :])
    # Spacing and case change the typed words only; a value (a spaced-out number, an IBAN) stays.
    out = [p if p.value else Piece(_tidy(p.text)) for p in out]
    roll = rng.random()
    if roll < 0.45:
        out = [p if p.value else Piece(p.text.lower()) for p in out]
    elif roll < 0.7 and out and not out[0].value:
        out[0] = Piece(_capitalise(out[0].text.lstrip()))
    text = "".join(p.text for p in out).strip()
    chat = _chat_words()
    if rng.random() < 0.15:
        text = rng.choice(chat.prefixes) + text
    if rng.random() < 0.25:
        text = (text[:-1] if text.endswith(".") and not out[-1].value else text) + rng.choice(chat.suffixes)
    if rng.random() < 0.15:
        text = _add_emoji(text, rng)
    return text


def _tidy(text: str) -> str:
    """Single spaces, none before punctuation."""
    return re.sub(r" ([,.!?;:])", r"\1", re.sub(r"\s+", " ", text))


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _add_emoji(text: str, rng: random.Random) -> str:
    emoji = rng.choice(_chat_words().emoji) * rng.choice((1, 1, 2, 3))
    return f"{text} {emoji}" if rng.random() < 0.8 else f"{emoji} {text}"


def _stretch(word: str, rng: random.Random) -> str:
    # "hi" -> "hiii", "bye" -> "byeee": the last letter held, as people type greetings.
    return word + word[-1] * rng.randint(1, 4) if word[-1:].isalpha() else word


def _short(pieces: list[Piece], rng: random.Random) -> str:
    literals = [i for i, p in enumerate(pieces) if not p.value]
    pieces = [p if p.value else Piece(re.sub(r"\s+", " ", p.text)) for p in pieces]
    if literals and rng.random() < 0.3:
        i = rng.choice(literals)
        words = pieces[i].text.split(" ")
        j = rng.randrange(len(words))
        words[j] = _stretch(words[j], rng)
        pieces[i] = Piece(" ".join(words))
    roll = rng.random()
    case = str.lower if roll < 0.6 else (_capitalise if roll < 0.85 else str.upper)
    pieces = [
        p if p.value else Piece(case(p.text) if case is not _capitalise or i == 0 else p.text)
        for i, p in enumerate(pieces)
    ]
    text = "".join(p.text for p in pieces).strip()
    if rng.random() < 0.25 and text[-1:].isalnum():
        text += rng.choice(("!", "!!", ".", "?", " :)", " :D", "~"))
    if rng.random() < 0.15:
        text = _add_emoji(text, rng)
    return text.strip()


def _formal(pieces: list[Piece], rng: random.Random) -> str:
    lower = rng.random() < 0.1
    tidy = []
    for p in pieces:
        if p.value:
            tidy.append(p)
            continue
        # Spaces collapse within a line; line breaks are part of a form's or an e-mail's layout.
        text = re.sub(r"[ \t]*\n[ \t]*", "\n", re.sub(r"[ \t]+", " ", p.text))
        tidy.append(Piece(text.lower() if lower else text))
    return re.sub(r"\n{3,}", "\n\n", "".join(p.text for p in tidy).strip())


def apply_style(pieces: list[Piece], register: str, rng: random.Random) -> str:
    """Join ``pieces`` into one message in ``register``; value pieces come out unchanged."""
    if register == "chat":
        return _chat(pieces, rng)
    if register == "short":
        return _short(pieces, rng)
    return _formal(pieces, rng)
