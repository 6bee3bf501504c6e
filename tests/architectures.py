"""Tiny random-weight bases of the decoder families guardtune supports, each with a tokenizer and a
chat template shaped like the family's real one.

Every base is 2 layers, hidden size 64, built from the family's own transformers config class and
saved as a Hugging Face directory, so ``--base DIR`` takes the same path a user's download does.
The tokenizers differ where the real ones differ: Qwen adds no BOS token, Llama and Mistral ship
without a pad token (guardtune pads with EOS), and each chat template has the family's turn markers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from conftest import WORDS
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

# Simplified from each family's tokenizer_config.json: same turn markers, same generation prompt.
LLAMA3_CHAT = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MISTRAL_CHAT = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
PHI3_CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
GEMMA_CHAT = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
}


@dataclass(frozen=True)
class Family:
    """A decoder family: its config and model classes, chat template and tokenizer quirks."""

    name: str
    config_class: Callable[..., Any]
    model_class: type[PreTrainedModel]
    chat_template: str
    markers: tuple[str, ...]  # the template's special tokens
    settings: dict[str, Any] = field(default_factory=dict)
    bos: bool = True
    pad: bool = True
    # transformers' model_type, which export refusals name
    model_type: str = ""


FAMILIES = {
    family.name: family
    for family in (
        Family(
            "llama",
            LlamaConfig,
            LlamaForCausalLM,
            LLAMA3_CHAT,
            ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            {"tie_word_embeddings": True},  # as Llama 3.2 1B / 3B
            pad=False,
            model_type="llama",
        ),
        Family(
            "qwen2",
            Qwen2Config,
            Qwen2ForCausalLM,
            CHATML,
            ("<|im_start|>", "<|im_end|>"),
            {"tie_word_embeddings": True},
            bos=False,
            model_type="qwen2",
        ),
        Family(
            "qwen3",
            Qwen3Config,
            Qwen3ForCausalLM,
            CHATML,
            ("<|im_start|>", "<|im_end|>"),
            {"head_dim": 32, "tie_word_embeddings": True},
            bos=False,
            model_type="qwen3",
        ),
        Family(
            "mistral",
            MistralConfig,
            MistralForCausalLM,
            MISTRAL_CHAT,
            ("[INST]", "[/INST]"),
            {"sliding_window": None},
            pad=False,
            model_type="mistral",
        ),
        Family(
            "phi3",
            Phi3Config,
            Phi3ForCausalLM,
            PHI3_CHAT,
            ("<|user|>", "<|assistant|>", "<|end|>"),
            {"sliding_window": None},
            model_type="phi3",
        ),
        Family(
            "gemma2",
            Gemma2Config,
            Gemma2ForCausalLM,
            GEMMA_CHAT,
            ("<start_of_turn>", "<end_of_turn>"),
            # Gemma 2's soft-capping of attention and final logits, its 4096 window scaled down
            # but still longer than any test prompt (as the real window is for messages).
            {
                "head_dim": 32,
                "query_pre_attn_scalar": 32,
                "sliding_window": 256,
                "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0,
            },
            model_type="gemma2",
        ),
        Family(
            "gemma3",
            Gemma3TextConfig,
            Gemma3ForCausalLM,
            GEMMA_CHAT,
            ("<start_of_turn>", "<end_of_turn>"),
            {
                "head_dim": 32,
                "sliding_window": 256,
                "layer_types": ["sliding_attention", "full_attention"],
            },
            model_type="gemma3_text",
        ),
    )
}


def family_tokenizer(family: Family) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer with the family's chat markers, BOS and pad conventions."""
    specials = ["<eos>", "<bos>", "<unk>", *(["<pad>"] if family.pad else []), *family.markers]
    corpus = [" ".join(words) for words in WORDS.values()] * 20
    corpus += ["the quick brown fox jumps over the lazy dog 0123456789 @ . , ? !"] * 20
    # Chat answers open the assistant turn without a space; plain prompts answer after one.
    labels = ("none", "asking", "giving", "safe", "unsafe", "user", "assistant", "model")
    corpus += [f"Answer: {label}\n{label}" for label in labels] * 60
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    if family.bos:
        bos = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>" if family.bos else None,
        eos_token="<eos>",
        pad_token="<pad>" if family.pad else None,
        unk_token="<unk>",
        additional_special_tokens=list(family.markers),
    )
    tokenizer.chat_template = family.chat_template
    return tokenizer


def build_family_dir(family: Family, directory: Path, seed: int = 0) -> Path:
    """Save a tiny random ``family`` model and its tokenizer as a Hugging Face directory."""
    tokenizer = family_tokenizer(family)
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(seed)
    model = family.model_class(family.config_class(**(SMALL | ids | family.settings)))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
