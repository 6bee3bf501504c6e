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
from typing import Literal

Register = Literal["chat", "short", "formal"]
REGISTERS: tuple[str, ...] = ("chat", "short", "formal")


@dataclass
class Piece:
    """A run of message text; ``value`` runs hold filled-in values that styling must not alter."""

    text: str
    value: bool = False


WORD = re.compile(r"[A-Za-z']+")
_SLANG: dict[str, str] = {
    "you": "u",
    "your": "ur",
    "you're": "ur",
    "are": "r",
    "please": "pls",
    "okay": "ok",
    "because": "cuz",
    "thanks": "thx",
    "really": "rly",
    "what's": "whats",
    "tonight": "tonite",
    "brother": "bro",
}
_SLANG_PHRASES: dict[str, str] = {
    "going to": "gonna",
    "want to": "wanna",
    "got to": "gotta",
    "right now": "rn",
    "to be honest": "tbh",
    "i don't know": "idk",
}
_PREFIXES = ("lol ", "ngl ", "bro ", "yo ", "hey ", "ok ", "fr ", "omg ", "wait ", "tbh ")
_SUFFIXES = (" lol", " fr", " bro", "!!", " lmao", " ngl", " :)", " xd", " haha", " pls")
_EMOJI = ("😂", "🔥", "💀", "😭", "👀", "🙏", "😎", "👍", "❤️", "🤣", "😅")


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
        for phrase, short in _SLANG_PHRASES.items():
            if rng.random() < 0.8:
                text = re.sub(rf"\b{phrase}\b", short, text, flags=re.IGNORECASE)
        text = WORD.sub(
            lambda m: (
                _SLANG[m.group(0).lower()]
                if m.group(0).lower() in _SLANG and rng.random() < 0.75
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
    text = re.sub(r"\s+", " ", "".join(p.text for p in out))
    # Tidy spacing before decorating, so emoticon suffixes such as " :)" keep their space.
    text = re.sub(r" ([,.!?;:])", r"\1", text).strip()
    text = _case(text, rng)
    if rng.random() < 0.15:
        text = rng.choice(_PREFIXES) + text
    if rng.random() < 0.25:
        text = text.rstrip(".") + rng.choice(_SUFFIXES)
    if rng.random() < 0.15:
        text = _add_emoji(text, rng)
    return re.sub(r"\s+", " ", text).strip()


def _case(text: str, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.45:
        return text.lower()
    if roll < 0.7:
        return text[:1].upper() + text[1:]
    return text


def _add_emoji(text: str, rng: random.Random) -> str:
    emoji = rng.choice(_EMOJI) * rng.choice((1, 1, 2, 3))
    return f"{text} {emoji}" if rng.random() < 0.8 else f"{emoji} {text}"


def _stretch(word: str, rng: random.Random) -> str:
    # "hi" -> "hiii", "bye" -> "byeee": the last letter held, as people type greetings.
    return word + word[-1] * rng.randint(1, 4) if word[-1:].isalpha() else word


def _short(pieces: list[Piece], rng: random.Random) -> str:
    text = re.sub(r"\s+", " ", "".join(p.text for p in pieces)).strip()
    if rng.random() < 0.3:
        words = text.split(" ")
        i = rng.randrange(len(words))
        words[i] = _stretch(words[i], rng)
        text = " ".join(words)
    roll = rng.random()
    if roll < 0.6:
        text = text.lower()
    elif roll < 0.85:
        text = text[:1].upper() + text[1:]
    else:
        text = text.upper()
    if rng.random() < 0.25 and text[-1:].isalnum():
        text += rng.choice(("!", "!!", ".", "?", " :)", " :D", "~"))
    if rng.random() < 0.15:
        text = _add_emoji(text, rng)
    return text.strip()


def _formal(pieces: list[Piece], rng: random.Random) -> str:
    if rng.random() < 0.1:
        pieces = [p if p.value else Piece(p.text.lower()) for p in pieces]
    text = "".join(p.text for p in pieces)
    # Spaces collapse within a line; line breaks are part of a form's or an e-mail's layout.
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def apply_style(pieces: list[Piece], register: str, rng: random.Random) -> str:
    """Join ``pieces`` into one message in ``register``; value pieces come out unchanged."""
    if register == "chat":
        return _chat(pieces, rng)
    if register == "short":
        return _short(pieces, rng)
    return _formal(pieces, rng)
