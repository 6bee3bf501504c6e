"""The ``generate`` method: instruction tuning to answer with the exact label, or Llama Guard style.

Single-label answers are the label text; multi-label answers are ``safe``, or ``unsafe``, a newline
and the category codes comma-separated in the task's order. Training is supervised fine-tuning with
the loss on the answer tokens only. Decoding is constrained by a trie over every valid answer, so an
answer outside the label set cannot come out, and only the LM-head rows of answer tokens are ever
computed.

Scores: single-label, the probability of each label at the first answer token (first tokens are
distinct, so this is the whole answer's probability). Multi-label, ``P(unsafe)`` at the first
content token against ``safe``, and for each category ``P(unsafe) * P(category listed)``, where
``P(category listed)`` comes from the constrained decode of the unsafe branch: at every point where
a category may start, the probability of its tokens.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DataCollatorForSeq2Seq

from guardtune.backbone import Backbone
from guardtune.errors import GuardtuneError
from guardtune.methods.base import MethodInfo, PromptMethod
from guardtune.methods.decoder import (
    PrefixState,
    decoder_states,
    decoder_states_after,
    lm_head_rows,
    output_cache,
    pad_batch,
)
from guardtune.methods.prompting import label_token_ids
from guardtune.methods.registry import register_method
from guardtune.task import TaskSpec

SAFE, UNSAFE = "safe", "unsafe"
MAX_CATEGORIES = 10  # 2^10 valid answers; the trie stays small
IGNORE = -100
USAGE = (
    "The merged causal LM answers the prompt in `guardtune_export.json` (also the chat "
    "template) with the label text (multi-label: `safe`, or `unsafe` and the category codes "
    "on the next line). Greedy decoding of a few tokens is enough."
)


@dataclass
class TrieNode:
    """A point in the answer: the tokens allowed next, and categories that may start here."""

    children: dict[int, TrieNode] = field(default_factory=dict)
    answer: str | None = None  # set on the node after the final (end-of-sequence) token
    code_starts: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Answer:
    """One valid answer: its text, its tokens, and where each listed category's tokens lie."""

    text: str
    tokens: list[int]
    code_spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, code)


def _build_trie(answers: list[Answer]) -> TrieNode:
    root = TrieNode()
    for answer in answers:
        node = root
        starts = {start: (end, code) for start, end, code in answer.code_spans}
        for offset, token in enumerate(answer.tokens):
            if offset in starts:
                end, code = starts[offset]
                node.code_starts.setdefault(code, answer.tokens[offset:end])
            node = node.children.setdefault(token, TrieNode())
        node.answer = answer.text
    return root


@register_method("generate")
class GenerateMethod(PromptMethod):
    """LoRA + supervised fine-tuning on exact answers; constrained decoding at inference."""

    info = MethodInfo(
        description="prompt + answer, loss on the answer tokens over the answer-token rows",
        export_formats=("merged", "gguf"),
        merged_as="causal-lm",
        card_usage=USAGE,
        label_smoothing=False,
    )
    logits_in_forward = False

    def __init__(self, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int) -> None:
        if task.overall is not None:
            # Its answers would need a masked category line for rows that name no category.
            raise GuardtuneError(
                f"--method generate: task {task.name} has an overall label ({task.overall!r}) with "
                "harm categories; use --method head"
            )
        super().__init__(backbone, adapter_name, task, max_length)
        self.eos = backbone.tokenizer.eos_token_id
        self.answers = self._answers()
        self.by_text = {answer.text: answer for answer in self.answers}
        self.trie = _build_trie(self.answers)
        self.longest_answer = max(len(answer.tokens) for answer in self.answers)
        self._collator = DataCollatorForSeq2Seq(backbone.tokenizer, label_pad_token_id=IGNORE, padding=True)
        if task.mode == "multi":
            firsts = [
                self.by_text[SAFE].tokens[0],
                self.by_text[UNSAFE + "\n" + task.label_names[0]].tokens[0],
            ]
            if firsts[0] == firsts[1]:
                raise GuardtuneError(f"task {task.name}: 'safe' and 'unsafe' start with the same token")
        else:
            label_token_ids(task, self.prompt)  # refuses labels whose first tokens collide

    # -- answers ----------------------------------------------------------------------------

    def _answers(self) -> list[Answer]:
        encode = self.prompt.answer_ids
        if self.task.mode == "single":
            return [Answer(name, [*encode(name), self.eos]) for name in self.task.label_names]
        codes = self.task.label_names
        if len(codes) > MAX_CATEGORIES:
            raise GuardtuneError(
                f"--method generate: task {self.task.name} has {len(codes)} categories; at most "
                f"{MAX_CATEGORIES} fit the constrained decoder"
            )
        plain = self.backbone.tokenizer
        newline = plain("\n", add_special_tokens=False)["input_ids"]
        comma = plain(",", add_special_tokens=False)["input_ids"]
        code_ids = {code: plain(code, add_special_tokens=False)["input_ids"] for code in codes}
        answers = [Answer(SAFE, [*encode(SAFE), self.eos])]
        for size in range(1, len(codes) + 1):
            for subset in itertools.combinations(codes, size):  # keeps the task's order
                tokens = [*encode(UNSAFE), *newline]
                spans = []
                for i, code in enumerate(subset):
                    if i:
                        tokens += comma
                    spans.append((len(tokens), len(tokens) + len(code_ids[code]), code))
                    tokens += code_ids[code]
                text = UNSAFE + "\n" + ",".join(subset)
                answers.append(Answer(text, [*tokens, self.eos], spans))
        return answers

    def answer_text(self, labels: Any) -> str:
        """The exact answer for a gold label (single) or label list (multi)."""
        if self.task.mode == "single":
            return str(labels)
        return UNSAFE + "\n" + ",".join(labels) if labels else SAFE

    # -- data -------------------------------------------------------------------------------

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.prompt.encode(texts, reserve=self.longest_answer)

    def features(self, texts: list[str], labels: list[Any], soft_labels: Any = None) -> list[dict[str, Any]]:
        if soft_labels is not None:
            raise GuardtuneError("--distill: the generate method trains on exact answers only")
        rows = []
        for prompt_ids, label in zip(self.encode(texts), labels, strict=True):
            answer = self.by_text[self.answer_text(label)].tokens
            rows.append({"input_ids": prompt_ids + answer, "labels": [IGNORE] * len(prompt_ids) + answer})
        return rows

    # -- training ---------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        soft_labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,  # guard tasks with unknown values are refused
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy on the answer tokens only (the prompt is masked out).

        The full vocabulary is scored at the few answer positions only, so the adapter also
        learns to beat every other token: plain greedy generation then gives the same answers as
        the constrained decoder, which at inference computes only the rows it can choose.
        """
        if labels is None:
            return {"logits": self.scores(input_ids, attention_mask)}
        hidden = decoder_states(self, input_ids, attention_mask).last_hidden_state
        targets = labels[:, 1:]
        answer = targets != IGNORE
        logits = lm_head_rows(self.backbone, hidden[:, :-1][answer], None)
        loss = nn.functional.cross_entropy(logits, targets[answer])
        return {"loss": loss}

    # -- inference --------------------------------------------------------------------------

    def _left_padded(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Decoding appends tokens on the right, so real tokens must end every row.
        if bool(attention_mask[:, -1].all()):
            return input_ids, attention_mask
        lengths = attention_mask.sum(dim=1)
        shift = attention_mask.shape[1] - lengths
        index = (torch.arange(attention_mask.shape[1], device=input_ids.device) - shift[:, None]) % (
            attention_mask.shape[1]
        )
        return input_ids.gather(1, index), attention_mask.gather(1, index)

    def _decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        force_unsafe: bool = False,
        prefix: PrefixState | None = None,
    ) -> tuple[list[str], list[list[tuple[TrieNode, dict[int, float]]]]]:
        """Greedy decoding inside the trie; returns answers and each row's steps (node, options)."""
        input_ids, attention_mask = self._left_padded(input_ids, attention_mask)
        out = decoder_states_after(self, prefix, input_ids, attention_mask, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        cache = output_cache(out)
        rows = input_ids.shape[0]
        nodes = [self.trie] * rows
        steps: list[list[tuple[TrieNode, dict[int, float]]]] = [[] for _ in range(rows)]
        forced = [force_unsafe] * rows
        before = prefix.length if prefix is not None else 0
        next_position = before + attention_mask.sum(dim=1)
        if prefix is not None:
            attention_mask = torch.cat([attention_mask.new_ones((rows, before)), attention_mask], dim=1)
        unsafe_first = (
            self.by_text[UNSAFE + "\n" + self.task.label_names[0]].tokens[0] if force_unsafe else -1
        )
        for _ in range(self.longest_answer):
            active = [i for i in range(rows) if nodes[i].answer is None]
            if not active:
                break
            union = sorted({t for i in active for t in nodes[i].children})
            logits = lm_head_rows(self.backbone, hidden, torch.tensor(union, device=hidden.device))
            # Fed back as input ids: on the inputs' device (under --device-map, not the last layer's).
            chosen = torch.full((rows,), self.eos, dtype=torch.long, device=input_ids.device)
            for i in active:
                allowed = [union.index(t) for t in nodes[i].children]
                probs = torch.softmax(logits[i, allowed], dim=-1).tolist()
                options = dict(zip(nodes[i].children, probs, strict=True))
                steps[i].append((nodes[i], options))
                token = max(options, key=options.__getitem__)
                if forced[i] and len(options) > 1:
                    token, forced[i] = unsafe_first, False
                chosen[i] = token
                nodes[i] = nodes[i].children[token]
            if all(node.answer is not None for node in nodes):
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((rows, 1))], dim=1)
            out = decoder_states(
                self,
                chosen[:, None],
                attention_mask,
                cache=cache,
                use_cache=True,
                position_ids=next_position[:, None],
            )
            next_position = next_position + 1
            hidden, cache = out.last_hidden_state[:, -1], output_cache(out)
        return [node.answer or "" for node in nodes], steps

    def generate_answers(self, texts: list[str]) -> list[str]:
        """The constrained greedy answers, as text (always one of the task's valid answers)."""
        batch = pad_batch(self.backbone.tokenizer, self.encode(texts), self.backbone.device)
        with torch.inference_mode():
            return self._decode(batch["input_ids"], batch["attention_mask"])[0]

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixState | None = None
    ) -> torch.Tensor:
        """Per-label probabilities; with ``prefix``, ``input_ids`` continue the shared prefix."""
        if self.task.mode == "single":
            ids, mask = self._left_padded(input_ids, attention_mask)
            hidden = decoder_states_after(self, prefix, ids, mask).last_hidden_state
            firsts = torch.tensor([a.tokens[0] for a in self.answers], device=hidden.device)
            return torch.softmax(lm_head_rows(self.backbone, hidden[:, -1], firsts), dim=-1)
        _, steps = self._decode(input_ids, attention_mask, force_unsafe=True, prefix=prefix)
        safe_first = self.by_text[SAFE].tokens[0]
        scores = torch.zeros((len(steps), len(self.task.labels)))
        for row, row_steps in enumerate(steps):
            # The first content token: the first step with a choice (not a forced newline).
            first_choice = next(options for _, options in row_steps if len(options) > 1)
            unsafe = 1.0 - first_choice.get(safe_first, 0.0)
            for column, code in enumerate(self.task.label_names):
                skipped = 1.0
                for position, (node, _) in enumerate(row_steps):
                    if code in node.code_starts:
                        skipped *= 1.0 - _path_probability(node.code_starts[code], row_steps[position:])
                scores[row, column] = unsafe * (1.0 - skipped)
        return scores


def _path_probability(code_tokens: list[int], steps: list[tuple[TrieNode, dict[int, float]]]) -> float:
    """Probability of a category's tokens from a branching step, as far as the decode observed.

    Where the decoded path leaves the category's tokens, the probability of the diverging token is
    the last factor (the rest of the category is then forced or unobserved).
    """
    probability = 1.0
    node_steps = iter(steps)
    node, options = next(node_steps)
    for token in code_tokens:
        probability *= options.get(token, 0.0)
        child = node.children.get(token)
        following = next(node_steps, None)
        if child is None or following is None or following[0] is not child:
            break
        node, options = following
    return probability
