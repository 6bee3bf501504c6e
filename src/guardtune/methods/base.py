"""The method protocol: everything a caller may ask of a method, declared once.

A method is a LoRA adapter on a shared backbone plus one way of reading the decoder as a
classifier. Inference (:mod:`guardtune.infer`), training (:mod:`guardtune.train`), the exports,
the server and the benchmarks use a method only through :class:`LoraMethod`; a method file
subclasses it (or :class:`PromptMethod`, when it reads an instruction prompt), fills in the
abstract operations, states what the shells need in its :class:`MethodInfo`, and registers itself
with :func:`guardtune.methods.registry.register_method`. Building, saving and loading the adapter
live here once; a method adds its own saved parts through :meth:`LoraMethod.restore` and
:meth:`LoraMethod.save_extras`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import torch
from torch import nn

from guardtune.backbone import Backbone
from guardtune.errors import GuardtuneError
from guardtune.methods.decoder import PrefixCache, PrefixState
from guardtune.methods.lora import LoraSettings, apply_lora, load_lora, save_lora
from guardtune.methods.prompting import PromptEncoder
from guardtune.task import TaskSpec

if TYPE_CHECKING:  # train_settings imports READOUTS from here
    from guardtune.train_settings import TrainSettings

ExportFormat = Literal["merged", "gguf"]
# How ``--format merged`` writes a method: transformers' *ForSequenceClassification with the
# method's linear head as ``score``, or the merged causal LM with the method's prompt as its chat
# template (the form GGUF files take too).
MergedForm = Literal["sequence-classifier", "causal-lm"]


@dataclass(frozen=True)
class MethodInfo:
    """What the shells (CLI, exports, model cards, benchmarks) say and do for a method.

    Attributes:
        description: one line on what the model reads and how it scores; ``guardtune methods``
            lists it, the training benchmark notes it.
        export_formats: the ``guardtune export --format`` values the method supports.
        merged_as: how ``--format merged`` writes it (see ``MergedForm``); ``gguf`` needs
            ``causal-lm``.
        card_usage: Markdown for the "How to use" section of an export's README; ``{activation}``
            becomes the line that turns logits into probabilities.
        label_smoothing: whether the method's loss takes ``--label-smoothing`` (methods trained on
            exact answer tokens do not).
        readouts: the ``--readout`` values the method takes (see :data:`READOUTS`).
    """

    description: str
    export_formats: tuple[ExportFormat, ...] = ()
    merged_as: MergedForm | None = None
    card_usage: str = ""
    label_smoothing: bool = True
    readouts: tuple[str, ...] = ("last",)

    def __post_init__(self) -> None:
        if ("merged" in self.export_formats) != (self.merged_as is not None):
            raise ValueError("MethodInfo: merged_as is set exactly when export_formats has 'merged'")
        if "gguf" in self.export_formats and self.merged_as != "causal-lm":
            raise ValueError("MethodInfo: a gguf export is the merged causal LM (merged_as='causal-lm')")
        if self.export_formats and not self.card_usage:
            raise ValueError("MethodInfo: an exportable method needs card_usage for the export's README")


# Where a classifier reads the decoder: ``last``, the message's own last token; ``eos``, an
# end-of-sequence token appended to every message, whose state is the same token's reading of each
# context rather than a mix of the context and whichever word ends the message.
READOUTS = ("last", "eos")


def check_readout(method: type[LoraMethod], readout: str) -> None:
    """Refuse a ``--readout`` the method does not take."""
    if readout not in method.info.readouts:
        raise GuardtuneError(
            f"--readout {readout}: the {method.name} method takes {', '.join(method.info.readouts)}"
        )


def check_method_settings(method: type[LoraMethod], settings: TrainSettings) -> None:
    """Refuse, before any training, settings the method cannot take: ``--label-smoothing`` for a
    method trained on exact answers, a ``--readout`` it does not read at."""
    if settings.label_smoothing and not method.info.label_smoothing:
        raise GuardtuneError(f"--label-smoothing: the {method.name} method trains on exact answers only")
    check_readout(method, settings.readout)


class LoraMethod(nn.Module, ABC):
    """A LoRA adapter named ``adapter_name`` on ``backbone``'s PEFT model, for one task.

    Attributes every method has:
        backbone, peft_model, adapter_name, task, max_length: what it runs on and for.
        shared_prefix: token ids every encoded row starts with (the prompt's fixed start); its
            key/value cache is computed once (:meth:`prefix_state`). Empty: nothing to reuse.
        prompt: the task's instruction prompt, for methods that read one (exports template it).
        longest_answer: tokens a method decodes after the prompt (room kept free for them).
        distill: ``(alpha, temperature)`` of a teacher's soft labels; set by training.
        label_smoothing: share of the gold label spread over all labels in the loss; set by training.
        readout: where the classifier reads the decoder (:data:`READOUTS`); set by :meth:`create`
            and saved with the model by the methods that take more than ``last``.
    """

    name: ClassVar[str]  # set by register_method
    info: ClassVar[MethodInfo]
    # Whether ``forward`` returns per-label logits (training then scores them each epoch) or only
    # a loss.
    logits_in_forward: ClassVar[bool]
    # Whether messages are wrapped in the task's instruction prompt (the benchmark's plain
    # ``generate()`` baseline runs such adapters).
    reads_prompt: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.peft_model = backbone.peft_model
        self.adapter_name = adapter_name
        self.task = task
        self.max_length = max_length
        self.distill: tuple[float, float] | None = None
        self.label_smoothing = 0.0
        self.readout = "last"
        self.shared_prefix: list[int] = []
        self.prompt: PromptEncoder | None = None
        self.longest_answer = 0
        self._prefix_cache = PrefixCache()
        self._collator: Any = None  # each method sets the transformers collator its rows need

    # -- what each method defines -----------------------------------------------------------------

    @abstractmethod
    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, as the method reads them (prompt included), within ``max_length``."""

    @abstractmethod
    def features(self, texts: list[str], labels: list[Any], soft_labels: Any = None) -> list[dict[str, Any]]:
        """Training rows (``input_ids``, ``labels``, ...) for :meth:`collate` and :meth:`forward`.

        ``soft_labels``: a teacher's ``(rows, labels)`` scores when distilling.
        """

    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        soft_labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The training pass over a collated batch: ``loss`` when ``labels`` are given, and
        ``logits`` per label when :attr:`logits_in_forward`. ``label_mask`` leaves unknown gold
        values out of a guard task's loss."""

    @abstractmethod
    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixState | None = None
    ) -> torch.Tensor:
        """Per-label probabilities ``(rows, labels)`` for one padded batch of :meth:`encode` rows.

        With ``prefix`` (from :meth:`prefix_state`), ``input_ids`` hold only what follows the
        shared prefix.
        """

    # -- building and persistence -----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        backbone: Backbone,
        task: TaskSpec,
        lora: LoraSettings,
        max_length: int,
        train_labels: list[Any] | None = None,
        readout: str = "last",
    ) -> Self:
        """A new trainable adapter on ``backbone``, fitted to ``train_labels`` where a method uses
        them, read at ``readout`` (:data:`READOUTS`)."""
        check_readout(cls, readout)
        method = cls(backbone, apply_lora(backbone, lora), task, max_length)
        method.readout = readout
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
        # Reading the state dict makes bitsandbytes' CPU backend unpack k-bit weights (repacked on
        # the next pass), which moved a prefix cache filled before the save 2e-4 away from what a
        # reload computes; refilling it on the next use costs one pass over the prefix.
        self._prefix_cache.clear()

    def save_extras(self, directory: Path) -> None:
        """What the method adds to the adapter; nothing unless a method overrides it."""

    # -- training -----------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> Self:
        if mode:
            self._prefix_cache.clear()  # training changes the weights the prefix cache was made with
        return super().train(mode)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters training changes (adapter and head), for light checkpoints."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def get_input_embeddings(self) -> nn.Module:
        """The base's token embedding: where the Trainer adds ``--neftune-alpha``'s noise."""
        embedding: nn.Module = self.backbone.model.get_input_embeddings()
        return embedding

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A padded batch of :meth:`features` rows."""
        return self._collator(features)

    # -- inference ----------------------------------------------------------------------------------

    def prefix_state(self) -> PrefixState:
        """The key/value cache of :attr:`shared_prefix` (non-empty), computed once per weights."""
        return self._prefix_cache.get(self)

    def message_budget(self) -> int:
        """How many of a message's own tokens the method reads (its prompt and answer excluded)."""
        return self.max_length - 1  # the BOS token

    # -- what exports read --------------------------------------------------------------------------

    def linear_head(self) -> nn.Linear | None:
        """The layer from the last token's hidden state to label logits, for methods with one
        (``merged_as="sequence-classifier"`` exports it as transformers' ``score``)."""
        return None

    @property
    def classifier_tokens(self) -> list[int] | None:
        """Token ids whose LM-head rows at the last prompt token are the label logits, when the
        scores are exactly their softmax (vLLM's classify conversion reads them); else None."""
        return None


class PromptMethod(LoraMethod):
    """A method that wraps each message in the task's instruction prompt.

    Every prompt starts with the same tokens: inference computes their key/value cache once per
    model (see infer.py) and reuses it until training changes the weights.
    """

    reads_prompt: ClassVar[bool] = True
    prompt: PromptEncoder

    def __init__(self, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int) -> None:
        super().__init__(backbone, adapter_name, task, max_length)
        self.prompt = PromptEncoder.for_task(task, backbone.tokenizer, max_length)
        self.shared_prefix = self.prompt.shared

    def message_budget(self) -> int:
        reserve = len(self.prompt.prefix) + len(self.prompt.suffix) + self.longest_answer
        return self.max_length - reserve
