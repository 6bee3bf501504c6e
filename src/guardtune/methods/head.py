"""The ``head`` method (LoRA-Guard): LoRA on a frozen decoder + a linear head on the last token.

The full-vocabulary LM head is never computed: the decoder's final hidden state at the last real
token (the message's own, or with ``--readout eos`` an end-of-sequence token appended to it) goes
through a small ``hidden -> labels`` linear layer. With the adapter disabled the causal
LM is exactly the base model, so one model in memory can both chat and guard (the dual path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import DataCollatorWithPadding

from guardtune.backbone import Backbone
from guardtune.errors import GuardtuneError
from guardtune.long_text import head_and_tail
from guardtune.methods.base import READOUTS, LoraMethod, MethodInfo
from guardtune.methods.decoder import PrefixState, decoder_states_after, last_token_states
from guardtune.methods.losses import label_features, multi_label_loss, single_label_loss
from guardtune.methods.registry import register_method
from guardtune.modeldir import read_metadata, read_tensors
from guardtune.task import TaskSpec

HEAD_FILE = "head.safetensors"
USAGE = (
    "```python\n"
    "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
    'tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")\n'
    'model = AutoModelForSequenceClassification.from_pretrained("THIS_DIR")\n'
    'batch = tokenizer(["whats ur snap?"], return_tensors="pt", padding=True)\n'
    "logits = model(**batch).logits\n"
    "{activation}\n"
    "```\n\n"
    "The message is scored as it is, with no prompt around it."
)


def positive_weights(task: TaskSpec, labels: list[list[str]], cap: float = 20.0) -> torch.Tensor:
    """Per-label BCE positive weights (negatives / positives), so rare categories still count."""
    names = task.label_names
    known = task.known_mask(labels)
    positives = np.array([sum(name in row for row in labels) for name in names], dtype=np.float64)
    negatives = known.sum(axis=0) - positives
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return torch.tensor(np.clip(weights, 1.0, cap), dtype=torch.float32)


def saved_readout(path: Path) -> str:
    """The readout a head was trained with, from its file's metadata (``last`` before it was saved).

    Raises:
        GuardtuneError: a readout this version does not know.
    """
    readout = read_metadata(path).get("readout", "last")
    if readout not in READOUTS:
        raise GuardtuneError(
            f"{path}: readout {readout!r} in its metadata (expected one of {', '.join(READOUTS)})"
        )
    return readout


@register_method("head")
class HeadMethod(LoraMethod):
    """LoRA + linear classification head on the last token's hidden state."""

    info = MethodInfo(
        description="message only, linear head on the last token",
        # llama.cpp cannot run the linear head; transformers' *ForSequenceClassification can.
        export_formats=("merged",),
        merged_as="sequence-classifier",
        card_usage=USAGE,
        readouts=("last", "eos"),
    )
    logits_in_forward = True

    def __init__(
        self,
        backbone: Backbone,
        adapter_name: str,
        task: TaskSpec,
        max_length: int,
        bias: bool = False,
    ) -> None:
        super().__init__(backbone, adapter_name, task, max_length)
        # No bias, so the head is exactly transformers' ``*ForSequenceClassification.score`` and a
        # merged export loads with AutoModelForSequenceClassification. ``bias=True`` only for
        # models saved before heads were bias-free.
        self.classifier = nn.Linear(backbone.hidden_size, len(task.labels), bias=bias, dtype=torch.float32)
        self.classifier.to(backbone.device)
        # BCE positive weights per label; weigh_labels sets them from the training labels.
        ones = torch.ones(len(task.labels), device=backbone.device)
        self.register_buffer("pos_weight", ones, persistent=False)
        self._collator = DataCollatorWithPadding(backbone.tokenizer)

    # -- building and persistence -------------------------------------------------------------

    def weigh_labels(self, train_labels: list[Any]) -> None:
        """Multi-label: BCE positive weights from the training labels, so rare categories count."""
        if self.task.mode == "multi":
            weights = positive_weights(self.task, train_labels)
            self.get_buffer("pos_weight").copy_(weights)

    @classmethod
    def restore(
        cls, directory: Path, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int
    ) -> HeadMethod:
        """The method around a loaded adapter, with the head saved beside it."""
        state = read_tensors(directory / HEAD_FILE, device=str(backbone.device))
        method = cls(backbone, adapter_name, task, max_length, bias="bias" in state)
        method.readout = saved_readout(directory / HEAD_FILE)
        expected = {k: tuple(v.shape) for k, v in method.classifier.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            raise GuardtuneError(
                f"{directory / HEAD_FILE}: head tensors {found} do not match the task and base "
                f"(expected {expected})"
            )
        method.classifier.load_state_dict(state)
        return method

    def save_extras(self, directory: Path) -> None:
        """The head as safetensors, its label order and readout in the metadata."""
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.classifier.state_dict().items()}
        metadata = {"labels": ",".join(self.task.label_names), "readout": self.readout}
        save_file(state, str(directory / HEAD_FILE), metadata=metadata)

    # -- data -----------------------------------------------------------------------------------

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text: the message itself (and the readout token), its head and tail kept
        when over ``max_length``."""
        encoded = self.backbone.tokenizer(texts)["input_ids"]
        end = self.readout_tokens()
        return [head_and_tail(list(ids) + end, self.max_length) for ids in encoded]

    def readout_tokens(self) -> list[int]:
        """What :meth:`encode` appends to every message: nothing, or the end-of-sequence token.

        Raises:
            GuardtuneError: ``readout == "eos"`` on a tokenizer without an end-of-sequence token.
        """
        if self.readout == "last":
            return []
        eos = self.backbone.tokenizer.eos_token_id
        if eos is None:
            raise GuardtuneError(
                f"--readout eos: the base {self.backbone.base}'s tokenizer has no end-of-sequence token"
            )
        return [int(eos)]

    def message_budget(self) -> int:
        return super().message_budget() - len(self.readout_tokens())

    def features(self, texts: list[str], labels: list[Any], soft_labels: Any = None) -> list[dict[str, Any]]:
        """Training rows: token ids, the gold label (class index or multi-hot row), soft labels."""
        return label_features(self.task, self.encode(texts), labels, soft_labels)

    # -- computation ----------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        soft_labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = self._logits(input_ids, attention_mask)
        output = {"logits": logits}
        if labels is not None:
            if self.task.mode == "single":
                output["loss"] = single_label_loss(
                    logits, labels, soft_labels, self.distill, self.label_smoothing
                )
            else:
                output["loss"] = multi_label_loss(
                    logits,
                    labels,
                    self.get_buffer("pos_weight"),
                    soft_labels,
                    self.distill,
                    label_mask,
                    self.label_smoothing,
                )
        return output

    def _logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixState | None = None
    ) -> torch.Tensor:
        hidden = decoder_states_after(self, prefix, input_ids, attention_mask).last_hidden_state
        pooled = last_token_states(hidden, attention_mask)
        # The head sits with the input embedding; under --device-map the last layer may not.
        return self.classifier(pooled.to(self.classifier.weight.device, torch.float32))

    def scores_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-label probabilities: softmax for single-label, independent sigmoids for multi."""
        if self.task.mode == "single":
            return torch.softmax(logits.float(), dim=-1)
        return torch.sigmoid(logits.float())

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixState | None = None
    ) -> torch.Tensor:
        """Per-label probabilities for one padded batch (the message alone has no shared prefix,
        so ``prefix`` is None unless a caller made one)."""
        return self.scores_from_logits(self._logits(input_ids, attention_mask, prefix))

    def linear_head(self) -> nn.Linear:
        return self.classifier
