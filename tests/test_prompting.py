"""Prompt ids are those of the whole rendered prompt, as an engine (vLLM, llama.cpp) tokenizes it,
and only the message is cut when it does not fit."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from guardtune.methods.prompting import PromptEncoder
from guardtune.task import load_task

MESSAGES = [
    "whats ur snap?",
    "gg!",
    "my mail is here.",
    '"quoted" start',
    " leading space",
    "trailing space ",
    "two\nlines",
    "naïve café ✓",
    "@me 0123456789",
    "",
]


def rendered_ids(prompt: PromptEncoder, text: str) -> list[int]:
    """What a server given the rendered prompt as text tokenizes (BOS spelled in the text)."""
    rendered = prompt.text_before + text + prompt.text_after
    return list(prompt.tokenizer(rendered, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def tiny_prompt(tiny_base: str) -> PromptEncoder:
    return PromptEncoder.for_task(load_task("pii-intent"), AutoTokenizer.from_pretrained(tiny_base), 256)


def test_prompt_ids_are_the_whole_rendered_prompts_ids(tiny_prompt: PromptEncoder) -> None:
    ids = tiny_prompt.encode(MESSAGES)
    assert ids == [rendered_ids(tiny_prompt, text) for text in MESSAGES]
    bos = tiny_prompt.tokenizer.bos_token_id
    assert all(row[0] == bos and row.count(bos) == 1 for row in ids)
    # Every row starts with the ids a prefix cache stands for; they hold the whole instruction.
    shared = tiny_prompt.shared
    assert len(shared) > 10 and all(row[: len(shared)] == shared for row in ids)
    assert len(shared) >= len(tiny_prompt.prefix) - 1


def test_a_long_message_is_cut_and_the_instruction_and_answer_kept(tiny_prompt: PromptEncoder) -> None:
    words = "whats ur number my street is here call me at home? " * 40
    text = "START " + words + ' END?"'
    for reserve in (0, 7):
        limit = tiny_prompt.max_length - reserve
        (ids,) = tiny_prompt.encode([text], reserve=reserve)
        assert limit - 3 <= len(ids) <= limit  # the budget is used, and not exceeded
        cut = tiny_prompt.fit(text, reserve=reserve)
        assert cut.startswith("START whats") and cut.endswith(' END?"') and len(cut) < len(text)
        # The ids are those of the rendered prompt around the cut text: an engine given
        # `fit(text)` scores what guardtune scores.
        assert ids == rendered_ids(tiny_prompt, cut)
        decoded = tiny_prompt.tokenizer.decode(ids)
        assert decoded.startswith(tiny_prompt.text_before) and decoded.endswith(tiny_prompt.text_after)
    assert tiny_prompt.fit("gg") == "gg"


def test_a_message_merging_into_the_template_is_tokenized_as_engines_do(tiny_base: str) -> None:
    # A template whose text after the message continues a word: "sc" + "ore" tokenize to one
    # token ("score") in the rendered prompt, two when the message is tokenized apart.
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    template = "{instruction}\n\nMessage: {text}ore\n\nAnswer:"
    task = load_task("pii-intent").model_copy(update={"template": template})
    prompt = PromptEncoder.for_task(task, tokenizer, 128)
    (ids,) = prompt.encode(["nice sc"])
    assert ids == rendered_ids(prompt, "nice sc")
    score = tokenizer.convert_tokens_to_ids("Ġscore")
    assert score in ids
    assert score not in tokenizer(" nice sc", add_special_tokens=False)["input_ids"] + prompt.suffix


@pytest.mark.real_model
def test_gemma_merges_the_closing_quote_with_the_messages_punctuation() -> None:
    from guardtune.backbone import resolve_base_dir

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base_dir("gemma-3-270m")))
    prompt = PromptEncoder.for_task(load_task("pii-intent"), tokenizer, 256)
    assert prompt.text_before.startswith("<bos>") and prompt.text_after.startswith('"')
    ids = prompt.encode(MESSAGES)
    assert ids == [rendered_ids(prompt, text) for text in MESSAGES]
    # `?"` is one token of Gemma's vocabulary: the message's "?" and the template's closing quote
    # merge in the rendered prompt (what vLLM and llama.cpp score), not when tokenized apart.
    merged = tokenizer.convert_tokens_to_ids('?"')
    assert merged in ids[0]
    apart = prompt.prefix + tokenizer("whats ur snap?", add_special_tokens=False)["input_ids"] + prompt.suffix
    assert merged not in apart and ids[0] != apart
    shared = prompt.shared
    assert len(shared) > 20 and all(row[: len(shared)] == shared for row in ids)
