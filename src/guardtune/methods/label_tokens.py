"""The ``label-tokens`` method: the LM head as the classifier (the PII chat classifier's way).

The prompt is the task's instruction around the message; each label maps to the first token of
its text as it would follow the prompt. Training and scoring use only those rows of the LM head at
the answer position (softmax over the label rows, cross-entropy on the gold label), so the
262k-row head is never multiplied out. Only the LoRA adapter and the label-token map are saved:
the model stays a plain PEFT adapter on the base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DataCollatorWithPadding

from guardtune.backbone import Backbone
from guardtune.errors import GuardtuneError
from guardtune.methods.common import (
    PrefixState,
    cached_prefix,
    decoder_states_after,
    label_features,
    last_token_states,
    lm_head_rows,
    single_label_loss,
    trainable_state,
)
from guardtune.methods.lora import LoraSettings, apply_lora, load_lora, save_lora
from guardtune.methods.prompting import PromptEncoder
from guardtune.methods.registry import register_method
from guardtune.task import TaskSpec

LABEL_TOKENS_FILE = "label_tokens.json"


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


@register_method("label-tokens")
class LabelTokensMethod(nn.Module):
    """LoRA + the LM head's label rows at the answer position."""

    name = "label-tokens"

    def __init__(self, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int) -> None:
        super().__init__()
        if task.mode != "single":
            raise GuardtuneError(
                f"--method label-tokens: task {task.name} is multi-label; use --method head or generate"
            )
        self.backbone = backbone
        self.peft_model = backbone.peft_model
        self.adapter_name = adapter_name
        self.task = task
        self.max_length = max_length
        self.prompt = PromptEncoder.for_task(task, backbone.tokenizer, max_length)
        self.label_ids = label_token_ids(task, self.prompt)
        self.distill: tuple[float, float] | None = None
        self.logits_in_forward = True
        self._collator = DataCollatorWithPadding(backbone.tokenizer)
        # Every prompt starts with these tokens: inference computes them once (see infer.py).
        self.shared_prefix = self.prompt.prefix
        self._prefix: PrefixState | None = None

    @classmethod
    def create(
        cls,
        backbone: Backbone,
        task: TaskSpec,
        lora: LoraSettings,
        max_length: int,
        train_labels: list[Any] | None = None,
    ) -> LabelTokensMethod:
        return cls(backbone, apply_lora(backbone, lora), task, max_length)

    @classmethod
    def load(
        cls,
        directory: Path,
        backbone: Backbone,
        task: TaskSpec,
        max_length: int,
        adapter_name: str | None = None,
    ) -> LabelTokensMethod:
        method = cls(backbone, load_lora(backbone, directory, adapter_name), task, max_length)
        saved = json.loads((directory / LABEL_TOKENS_FILE).read_text(encoding="utf-8"))
        if saved.get("token_ids") != method.label_ids:
            raise GuardtuneError(
                f"{directory / LABEL_TOKENS_FILE}: label tokens {saved.get('token_ids')} differ from "
                f"what the base's tokenizer gives ({method.label_ids}); is this the right base?"
            )
        method.eval()
        return method

    def save(self, directory: Path) -> None:
        save_lora(self.peft_model, self.adapter_name, directory, self.backbone.base)
        tokens = self.backbone.tokenizer.convert_ids_to_tokens(self.label_ids)
        record = {"labels": self.task.label_names, "token_ids": self.label_ids, "tokens": tokens}
        (directory / LABEL_TOKENS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.prompt.encode(texts)

    def features(self, texts: list[str], labels: list[Any], soft_labels: Any = None) -> list[dict[str, Any]]:
        return label_features(self.task, self.encode(texts), labels, soft_labels)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self._collator(features)

    def train(self, mode: bool = True) -> LabelTokensMethod:
        if mode:
            self._prefix = None  # training changes the weights the prefix cache was made with
        return super().train(mode)

    def prefix_state(self) -> PrefixState:
        return cached_prefix(self)

    def label_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixState | None = None
    ) -> torch.Tensor:
        """Logits of the label tokens at the answer position (the last prompt token).

        With ``prefix``, ``input_ids`` hold only what follows the shared prompt prefix.
        """
        hidden = decoder_states_after(self, prefix, input_ids, attention_mask).last_hidden_state
        pooled = last_token_states(hidden, attention_mask)
        rows = torch.tensor(self.label_ids, device=pooled.device)
        return lm_head_rows(self.backbone, pooled, rows)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        soft_labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = self.label_logits(input_ids, attention_mask)
        output = {"logits": logits}
        if labels is not None:
            output["loss"] = single_label_loss(logits, labels, soft_labels, self.distill)
        return output

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixState | None = None
    ) -> torch.Tensor:
        return torch.softmax(self.label_logits(input_ids, attention_mask, prefix), dim=-1)
