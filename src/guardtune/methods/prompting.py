"""Prompts for the methods that read an instruction: the task's template around the message, and
the label tokens that answer it.

The prompt is split at ``{text}`` into a fixed prefix and suffix that are tokenized once; only the
message is truncated, so the instruction and the answer position always survive, and every prompt
of a task starts with the same tokens (what a prefix cache can reuse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from guardtune.errors import GuardtuneError
from guardtune.long_text import head_and_tail
from guardtune.task import TaskSpec

SINGLE_TEMPLATE = '{instruction}\n\nMessage: "{text}"\n\nAnswer:'
MULTI_TEMPLATE = (
    '{instruction}\n\n<BEGIN CATEGORIES>\n{categories}\n<END CATEGORIES>\n\nMessage: "{text}"\n\nAnswer:'
)
DEFAULT_INSTRUCTION = "Classify the message. Reply with exactly one of: {labels}."


def render_template(task: TaskSpec) -> str:
    """The task's prompt with everything but ``{text}`` filled in."""
    template = task.template or (MULTI_TEMPLATE if task.mode == "multi" else SINGLE_TEMPLATE)
    label_list = ", ".join(f'"{name}"' for name in task.label_names)
    instruction = (task.instruction or DEFAULT_INSTRUCTION).replace("{labels}", label_list)
    categories = "\n".join(f"{name}: {text}" for name, text in task.labels.items())
    filled = template.replace("{instruction}", instruction)
    filled = filled.replace("{categories}", categories).replace("{labels}", label_list)
    if filled.count("{text}") != 1:
        raise GuardtuneError(f"task {task.name}: template must contain {{text}} exactly once")
    return filled


@dataclass
class PromptEncoder:
    """Token ids of ``prefix + message + suffix``, with only the message truncated."""

    prefix: list[int]
    suffix: list[int]
    tokenizer: Any
    max_length: int
    # Answers follow the prompt after a space in a plain template ("Answer: none").
    answer_prefix: str = " "
    # The same prompt as text (``bos`` token included), for exports that template it elsewhere.
    text_before: str = ""
    text_after: str = ""
    # Whitespace that ends the text before the message ("[INST] " in Mistral's template), tokenized
    # with the message: byte-level BPE merges it into the message's first word, so a prefix that
    # kept it as its own token gave ids no server tokenizing the rendered chat would see.
    lead: str = ""

    @classmethod
    def for_task(cls, task: TaskSpec, tokenizer: Any, max_length: int) -> PromptEncoder:
        before, after = render_template(task).split("{text}")
        if getattr(tokenizer, "chat_template", None):
            # A chat model sees the prompt as a user turn and answers in its own turn.
            marker = "\x00TEXT\x00"
            chat = tokenizer.apply_chat_template(
                [{"role": "user", "content": before + marker + after.removesuffix("Answer:").rstrip()}],
                tokenize=False,
                add_generation_prompt=True,
            )
            before, after = chat.split(marker)
            answer_prefix = ""
            bos: list[int] = []
        else:
            answer_prefix = " "
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        stem = before.rstrip()
        lead = before[len(stem) :]
        prefix = bos + tokenizer(stem, add_special_tokens=False)["input_ids"]
        suffix = tokenizer(after, add_special_tokens=False)["input_ids"]
        if len(prefix) + len(suffix) + 4 > max_length:
            raise GuardtuneError(
                f"task {task.name}: the prompt takes {len(prefix) + len(suffix)} tokens, too many "
                f"for max length {max_length} (raise --max-length)"
            )
        bos_text = tokenizer.bos_token if bos else ""
        return cls(prefix, suffix, tokenizer, max_length, answer_prefix, bos_text + before, after, lead)

    def encode(self, texts: list[str], reserve: int = 0) -> list[list[int]]:
        """Prompt token ids per text, leaving ``reserve`` tokens of room for an answer."""
        budget = self.max_length - len(self.prefix) - len(self.suffix) - reserve
        bodies = self.tokenizer([self.lead + text for text in texts], add_special_tokens=False)["input_ids"]
        return [self.prefix + head_and_tail(list(body), max(budget, 1)) + self.suffix for body in bodies]

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer as it follows the prompt."""
        return list(self.tokenizer(self.answer_prefix + answer, add_special_tokens=False)["input_ids"])


def label_token_ids(task: TaskSpec, prompt: PromptEncoder) -> list[int]:
    """First token of each label's answer text; colliding labels are refused."""
    firsts = []
    for name in task.label_names:
        ids = prompt.answer_ids(name)
        if not ids:
            raise GuardtuneError(f"task {task.name}: label {name!r} maps to no token")
        firsts.append(ids[0])
    decode = prompt.tokenizer.convert_ids_to_tokens
    seen: dict[int, str] = {}
    for name, token in zip(task.label_names, firsts, strict=True):
        if token in seen:
            raise GuardtuneError(
                f"task {task.name}: labels {seen[token]!r} and {name!r} both start with token "
                f"{decode(token)!r}; rename one so their first tokens differ"
            )
        seen[token] = name
    return firsts
