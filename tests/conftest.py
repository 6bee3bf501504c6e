"""Shared fixtures: a tiny random-weight Gemma-3-shaped model with a tokenizer trained in the test."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
WORDS = {
    "none": ["game", "fun", "score", "level", "map", "nice", "gg", "tower", "win", "play"],
    "asking": [
        "what",
        "whats",
        "your",
        "ur",
        "number",
        "email",
        "snap",
        "address",
        "where",
        "live",
    ],
    "giving": ["my", "is", "call", "me", "at", "mail", "street", "phone", "here", "reach"],
}


def load_script(path: Path) -> ModuleType:
    """A script of the repository (a benchmark, an example) imported as a module, by file path."""
    spec = importlib.util.spec_from_file_location(f"_script_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toy_rows(n: int, seed: int) -> pd.DataFrame:
    """A separable three-class toy task: each class draws its words from its own vocabulary."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        words = [rng.choice(WORDS[label]) for _ in range(rng.randint(3, 7))]
        rows.append({"text": " ".join(words), "label": label})
    rng.shuffle(rows)
    return pd.DataFrame(rows)


def _tokenizer() -> PreTrainedTokenizerFast:
    corpus = [" ".join(words) for words in WORDS.values()] * 20
    corpus += ["the quick brown fox jumps over the lazy dog 0123456789 @ . , ? !"] * 20
    # Answers follow "Answer:" after a space; frequent enough that each label is one token.
    corpus += [f"Answer: {label}" for label in ("none", "asking", "giving", "safe", "unsafe")] * 60
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_tiny_model_dir(directory: Path, seed: int = 0, random_norms: bool = False, **config: Any) -> Path:
    """Save a 2-layer, hidden-64 Gemma 3 text model and its tokenizer as an HF directory.

    ``config`` overrides ``Gemma3TextConfig`` fields (window, head size, layer types);
    ``random_norms`` gives the norm weights random values instead of zeros (scale 1), so a
    converter that gets Gemma's ``1 + weight`` convention wrong is caught.
    """
    tokenizer = _tokenizer()
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**(settings | config)))
    if random_norms:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.normal_(0, 0.1)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a tiny random-weight model directory, usable as ``--base``."""
    return str(build_tiny_model_dir(tmp_path_factory.mktemp("tiny-base")))


@pytest.fixture(scope="session")
def tiny_base_wide_window(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model with a sliding window longer than any test prompt (as Gemma's 512 is)."""
    return str(build_tiny_model_dir(tmp_path_factory.mktemp("tiny-wide"), sliding_window=1024))


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train / validation / test CSVs of the separable toy task."""
    folder = tmp_path_factory.mktemp("toy-data")
    paths = {}
    for name, n, seed in (("train", 240, 1), ("val", 60, 2), ("test", 60, 3)):
        paths[name] = folder / f"{name}.csv"
        toy_rows(n, seed).to_csv(paths[name], index=False)
    return paths


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: object) -> int:
    """Run ``guardtune ARGS`` in this process; its exit code (0 when it returns normally)."""
    import sys

    from guardtune.cli import main

    monkeypatch.setattr(sys, "argv", ["guardtune", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
