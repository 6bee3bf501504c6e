"""Prompts for the methods that read an instruction: the task's template around the message, and
the label tokens that answer it.

The prompt is the task's template rendered around the message and tokenized as one string, as an
engine tokenizes it; only the message is truncated, so the instruction and the answer position
always survive, and every prompt of a task starts with the same tokens (what a prefix cache can
reuse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """Token ids of ``before + message + after``, with only the message truncated.

    The whole rendered prompt is tokenized as one string, as a server given the rendered chat
    template tokenizes it (vLLM, llama.cpp, transformers' ``apply_chat_template``): a message's
    first and last characters may merge with the template's text around it (``?"`` is one token
    in Gemma's vocabulary), so tokenizing the message apart gave ids no engine sees.
    """

    # The fixed text before and after the message as each tokenizes alone (BOS included): what the
    # prompt costs, for the message's budget.
    prefix: list[int]
    suffix: list[int]
    tokenizer: Any
    max_length: int
    # Answers follow the prompt after a space in a plain template ("Answer: none").
    answer_prefix: str = " "
    # The same prompt as text (``bos`` token included), for exports that template it elsewhere.
    text_before: str = ""
    text_after: str = ""
    # BOS ids put before the tokenized text (a plain template; a chat template spells BOS itself),
    # and the text before the message without it.
    bos: list[int] = field(default_factory=list)
    before: str = ""
    # The ids every prompt starts with, whatever the message (a prefix cache reuses them):
    # ``prefix`` less its end where a message's first characters can merge into it.
    shared: list[int] = field(default_factory=list)

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
        prefix = bos + tokenizer(before, add_special_tokens=False)["input_ids"]
        suffix = tokenizer(after, add_special_tokens=False)["input_ids"]
        if len(prefix) + len(suffix) + 4 > max_length:
            raise GuardtuneError(
                f"task {task.name}: the prompt takes {len(prefix) + len(suffix)} tokens, too many "
                f"for max length {max_length} (raise --max-length)"
            )
        bos_text = tokenizer.bos_token if bos else ""
        text_before = bos_text + before
        encoder = cls(prefix, suffix, tokenizer, max_length, answer_prefix, text_before, after, bos, before)
        encoder.shared = _common_start([prefix, *encoder.tokenize(list(_PROBES))])
        return encoder

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text's whole rendered prompt, untruncated."""
        rendered = [self.before + text + self.text_after for text in texts]
        encoded = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return [self.bos + list(ids) for ids in encoded]

    def encode(self, texts: list[str], reserve: int = 0) -> list[list[int]]:
        """Prompt token ids per text, leaving ``reserve`` tokens of room for an answer.

        A text whose prompt does not fit is read as :meth:`fit` cuts it; its ids are then those
        of the rendered prompt around the cut text.
        """
        limit = self.max_length - reserve
        rows = self.tokenize(texts)
        for i, row in enumerate(rows):
            if len(row) > limit:
                rows[i] = self._cut(texts[i], limit)[1]
        return rows

    def fit(self, text: str, reserve: int = 0) -> str:
        """``text`` as the prompt reads it: whole when it fits, else its head and tail.

        The cut is made at the message's own token boundaries (half the budget from each end, as
        :func:`~guardtune.long_text.head_and_tail`); as tokenizing the rendered prompt can merge
        tokens across the cut and the template, the budget shrinks until the whole prompt fits.
        """
        return self._cut(text, self.max_length - reserve)[0]

    def _cut(self, text: str, limit: int) -> tuple[str, list[int]]:
        """The cut text of :meth:`fit` and its prompt's ids, tokenized once per budget tried."""
        tokens = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = tokens["offset_mapping"]
        budget = limit - len(self.prefix) - len(self.suffix)
        while True:
            kept = head_and_tail(list(range(len(offsets))), max(budget, 1))
            cut = text if len(kept) == len(offsets) else _join(text, offsets, kept)
            ids = self.tokenize([cut])[0]
            over = len(ids) - limit
            if over <= 0 or budget <= 1:
                return cut, ids
            budget -= over

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an answer as it follows the prompt."""
        return list(self.tokenizer(self.answer_prefix + answer, add_special_tokens=False)["input_ids"])


# Messages that start as messages do (a letter, a space, punctuation, a digit, a newline, a
# quote, a non-ASCII letter): the prompt's ids they all share are the prefix a cache can reuse.
_PROBES = ("hello", " hello", "?", "1", "\n", '"', "'", "é", "@x", "<", "")


def _common_start(rows: list[list[int]]) -> list[int]:
    first = rows[0]
    length = len(first)
    for row in rows[1:]:
        length = min(length, len(row))
        length = next((i for i in range(length) if row[i] != first[i]), length)
    return first[:length]


def _join(text: str, offsets: list[tuple[int, int]], kept: list[int]) -> str:
    """The text of the kept tokens: the head's characters, then the tail's."""
    head = next((n for n, index in enumerate(kept) if index != n), len(kept))
    start = text[: offsets[kept[head - 1]][1]] if head else ""
    end = text[offsets[kept[head]][0] :] if head < len(kept) else ""
    return start + end


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
