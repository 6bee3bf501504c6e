"""What every method shares: a LoRA adapter on a shared backbone, built, saved and loaded by name.

A method subclasses :class:`LoraMethod` (or :class:`PromptMethod` when it reads an instruction
prompt) and adds its own parts: ``head`` its linear head, ``label-tokens`` its label-token map.
Those extras go through :meth:`LoraMethod.restore` and :meth:`LoraMethod.save_extras`, so building
and persistence live here once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import torch
from torch import nn

from guardtune.backbone import Backbone
from guardtune.methods.common import PrefixState, cached_prefix, trainable_state
from guardtune.methods.lora import LoraSettings, apply_lora, load_lora, save_lora
from guardtune.methods.prompting import PromptEncoder
from guardtune.task import TaskSpec


class LoraMethod(nn.Module):
    """A LoRA adapter named ``adapter_name`` on ``backbone``'s PEFT model, for one task."""

    name: str

    def __init__(self, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.peft_model = backbone.peft_model
        self.adapter_name = adapter_name
        self.task = task
        self.max_length = max_length
        # (temperature, weight) of the teacher's soft labels when distilling; set by training.
        self.distill: tuple[float, float] | None = None
        self._collator: Any = None  # each method sets the transformers collator its rows need

    @classmethod
    def create(
        cls,
        backbone: Backbone,
        task: TaskSpec,
        lora: LoraSettings,
        max_length: int,
        train_labels: list[Any] | None = None,
    ) -> Self:
        """A new trainable adapter on ``backbone``, fitted to ``train_labels`` where a method uses them."""
        method = cls(backbone, apply_lora(backbone, lora), task, max_length)
        if train_labels is not None:
            method.weigh_labels(train_labels)
        return method

    @classmethod
    def load(
        cls,
        directory: Path,
        backbone: Backbone,
        task: TaskSpec,
        max_length: int,
        adapter_name: str | None = None,
    ) -> Self:
        """The method saved in ``directory`` by :meth:`save`, in eval mode (no pickle).

        Several models trained on the same base can share one backbone, each under its own
        ``adapter_name``.
        """
        adapter = load_lora(backbone, directory, adapter_name)
        try:
            method = cls.restore(directory, backbone, adapter, task, max_length)
        except Exception:
            # A shared backbone must not keep an adapter whose model failed to load.
            backbone.peft_model.delete_adapter(adapter)
            raise
        method.eval()
        return method

    def weigh_labels(self, train_labels: list[Any]) -> None:
        """Set what depends on the training labels' balance; nothing unless a method overrides it."""

    @classmethod
    def restore(
        cls, directory: Path, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int
    ) -> Self:
        """The method around an adapter just loaded from ``directory``, with its saved extras."""
        return cls(backbone, adapter_name, task, max_length)

    def save(self, directory: Path) -> None:
        """The PEFT adapter (safetensors) and the method's extras into ``directory``."""
        save_lora(self.peft_model, self.adapter_name, directory, self.backbone.base)
        self.save_extras(directory)

    def save_extras(self, directory: Path) -> None:
        """What the method adds to the adapter; nothing unless a method overrides it."""

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self._collator(features)


class PromptMethod(LoraMethod):
    """A method that wraps each message in the task's instruction prompt.

    Every prompt starts with the same tokens: inference computes their key/value cache once per
    model (see infer.py) and reuses it until training changes the weights.
    """

    def __init__(self, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int) -> None:
        super().__init__(backbone, adapter_name, task, max_length)
        self.prompt = PromptEncoder.for_task(task, backbone.tokenizer, max_length)
        self.shared_prefix = self.prompt.prefix
        self._prefix: PrefixState | None = None

    def train(self, mode: bool = True) -> Self:
        if mode:
            self._prefix = None  # training changes the weights the prefix cache was made with
        return super().train(mode)

    def prefix_state(self) -> PrefixState:
        return cached_prefix(self)

    def save(self, directory: Path) -> None:
        super().save(directory)
        # Reading the state dict makes bitsandbytes' CPU backend unpack k-bit weights (repacked on
        # the next pass), which moved a prefix cache filled before the save 2e-4 away from what a
        # reload computes; refilling it on the next use costs one pass over the prefix.
        self._prefix = None
