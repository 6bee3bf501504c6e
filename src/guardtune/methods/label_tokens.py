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
from transformers import DataCollatorWithPadding

from guardtune.backbone import Backbone
from guardtune.errors import GuardtuneError
from guardtune.methods.base import MethodInfo, PromptMethod
from guardtune.methods.decoder import PrefixState, decoder_states_after, last_token_states, lm_head_rows
from guardtune.methods.losses import label_features, single_label_loss
from guardtune.methods.prompting import label_token_ids
from guardtune.methods.registry import register_method
from guardtune.modeldir import read_json_object
from guardtune.task import TaskSpec

LABEL_TOKENS_FILE = "label_tokens.json"
USAGE = (
    "The merged causal LM scores the prompt in `guardtune_export.json` (also the chat "
    "template): each label's score is the softmax over the label tokens' logits at the last "
    "prompt token. `config.json` carries `classifier_from_token` and `method` so vLLM serves "
    "it as a classifier:\n\n"
    "```bash\n"
    "vllm serve THIS_DIR --runner pooling --convert classify\n"
    "curl localhost:8000/classify -H 'Content-Type: application/json' \\\n"
    '  -d \'{"model": "THIS_DIR", "messages": [{"role": "user", "content": "whats ur snap?"}]}\'\n'
    "```"
)


@register_method("label-tokens")
class LabelTokensMethod(PromptMethod):
    """LoRA + the LM head's label rows at the answer position."""

    info = MethodInfo(
        description="prompt, loss on the label-token rows of the LM head at the answer",
        export_formats=("merged", "gguf"),
        merged_as="causal-lm",
        card_usage=USAGE,
    )
    logits_in_forward = True

    def __init__(self, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int) -> None:
        if task.mode != "single":
            raise GuardtuneError(
                f"--method label-tokens: task {task.name} is multi-label; use --method head or generate"
            )
        super().__init__(backbone, adapter_name, task, max_length)
        self.label_ids = label_token_ids(task, self.prompt)
        self._collator = DataCollatorWithPadding(backbone.tokenizer)

    @classmethod
    def restore(
        cls, directory: Path, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int
    ) -> LabelTokensMethod:
        """The method around a loaded adapter, checked against the label tokens saved beside it."""
        method = cls(backbone, adapter_name, task, max_length)
        saved = read_json_object(directory / LABEL_TOKENS_FILE)
        if saved.get("token_ids") != method.label_ids:
            raise GuardtuneError(
                f"{directory / LABEL_TOKENS_FILE}: label tokens {saved.get('token_ids')} differ from "
                f"what the base's tokenizer gives ({method.label_ids}); is this the right base?"
            )
        return method

    def save_extras(self, directory: Path) -> None:
        """The label-token map, so loading onto another tokenizer is caught."""
        tokens = self.backbone.tokenizer.convert_ids_to_tokens(self.label_ids)
        record = {"labels": self.task.label_names, "token_ids": self.label_ids, "tokens": tokens}
        (directory / LABEL_TOKENS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.prompt.encode(texts)

    def features(self, texts: list[str], labels: list[Any], soft_labels: Any = None) -> list[dict[str, Any]]:
        return label_features(self.task, self.encode(texts), labels, soft_labels)

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
        label_mask: torch.Tensor | None = None,  # single-label: every gold value is known
    ) -> dict[str, torch.Tensor]:
        logits = self.label_logits(input_ids, attention_mask)
        output = {"logits": logits}
        if labels is not None:
            output["loss"] = single_label_loss(
                logits, labels, soft_labels, self.distill, self.label_smoothing
            )
        return output

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixState | None = None
    ) -> torch.Tensor:
        return torch.softmax(self.label_logits(input_ids, attention_mask, prefix), dim=-1)

    @property
    def classifier_tokens(self) -> list[int]:
        return self.label_ids
