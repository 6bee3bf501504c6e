"""A leaner tokenizer load for the bases guardtune converted and cached itself.

Loading Gemma 3's tokenizer (262k tokens, 515k merges) is the highest memory point of a predict
process, before any weight is read: ``AutoTokenizer`` builds ``GemmaTokenizer``, which parses
``tokenizer.json`` in Python, keeps the vocabulary and merges as Python objects and builds the
Rust tokenizer from them (+460 MB peak over the imports); the Rust parser alone on the pretty-printed
file, whose merges are two-element arrays, still peaks at +355 MB. Rewritten once with the merges as
``"a b"`` strings (the format ``tokenizers`` has always read, exact when no merged token holds a
space) and no indentation, the file is a third of the size, and loading it straight into the Rust
tokenizer (``PreTrainedTokenizerFast``) peaks at about +280 MB.

Only directories under guardtune's own cache of converted bases are given a compact copy: a user's
model directory is never written to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from guardtune.atomic import atomic_dir

COMPACT_DIR = "tokenizer-compact-v1"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# Texts the compact copy must tokenize exactly as the original before it is kept: spaces, runs of
# whitespace and newlines, byte fallback, emoji, non-Latin scripts, special tokens.
PROBES = (
    "whats ur snap? my number is 555 0134",
    "  two  spaces\n\n\tand tabs\r\n",
    "Ünïcödé — “quotes” 日本語のテキスト 😀👍🏽 \u200b",
    "<bos><eos><pad> <start_of_turn>user\nhi<end_of_turn>",
    "https://example.com/a?b=c&d=e#f {'json': [1, 2.5e-3]}",
)


class _NotExact(Exception):
    """The compact copy tokenized a probe differently (nothing is written)."""


def compact_tokenizer_json(raw: dict[str, Any]) -> dict[str, Any] | None:
    """``raw`` (a parsed ``tokenizer.json``) with BPE merges as ``"a b"`` strings, or ``None`` when
    that form would not be exact (not BPE, or a merged token containing a space)."""
    model = raw.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        return None
    merges = []
    for merge in model.get("merges", []):
        if isinstance(merge, str):
            merges.append(merge)
            continue
        left, right = merge
        if " " in left or " " in right:
            return None  # the string form splits on the space
        merges.append(f"{left} {right}")
    return raw | {"model": model | {"merges": merges}}


def _same_ids(original: Path, compact: Path) -> bool:
    from tokenizers import Tokenizer

    before, after = Tokenizer.from_file(str(original)), Tokenizer.from_file(str(compact))
    if before.get_vocab_size(with_added_tokens=True) != after.get_vocab_size(with_added_tokens=True):
        return False
    return all(before.encode(text).ids == after.encode(text).ids for text in PROBES)


def ensure_compact_tokenizer(source: Path) -> Path | None:
    """The compact copy of ``source``'s tokenizer (written on first use), or ``None`` when it
    cannot be made exact."""
    target = source / COMPACT_DIR
    if (target / TOKENIZER_FILE).is_file():
        return target
    original = source / TOKENIZER_FILE
    if not original.is_file():
        return None
    compact = compact_tokenizer_json(json.loads(original.read_text(encoding="utf-8")))
    if compact is None:
        return None
    with atomic_dir(target, overwrite=True) as tmp:
        text = json.dumps(compact, ensure_ascii=False, separators=(",", ":"))
        (tmp / TOKENIZER_FILE).write_text(text, encoding="utf-8")
        del compact, text
        if (source / TOKENIZER_CONFIG).is_file():
            shutil.copyfile(source / TOKENIZER_CONFIG, tmp / TOKENIZER_CONFIG)
        if not _same_ids(original, tmp / TOKENIZER_FILE):
            raise _NotExact
    return target


def _load_compact(folder: Path) -> Any:
    from transformers import PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    # The model's own tokenizer class pads and truncates on its side (Gemma: left); the generic
    # class would default to the right.
    config = (
        json.loads((folder / TOKENIZER_CONFIG).read_text()) if (folder / TOKENIZER_CONFIG).is_file() else {}
    )
    own_class = (
        tokenizer_class_from_name(config["tokenizer_class"]) if config.get("tokenizer_class") else None
    )
    for side in ("padding_side", "truncation_side"):
        if own_class is not None and side not in config:
            setattr(tokenizer, side, getattr(own_class, side, getattr(tokenizer, side)))
    return tokenizer


def load_tokenizer(source: str | Path, cache: Path | None) -> Any:
    """``source``'s tokenizer: from a compact copy when ``source`` lies under ``cache`` (guardtune's
    own converted bases), else with ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    path = Path(source)
    if cache is not None and path.is_dir() and path.resolve().is_relative_to(cache.resolve()):
        try:
            folder = ensure_compact_tokenizer(path)
        except (_NotExact, OSError, ValueError):
            folder = None
        if folder is not None:
            return _load_compact(folder)
    return AutoTokenizer.from_pretrained(str(source))
