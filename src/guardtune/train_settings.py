"""The training hyper-parameters (:class:`TrainSettings`), apart from the training loop.

The CLI builds its options from these fields for every command, so this module imports nothing
the loop needs (the Trainer, ``datasets``, scikit-learn): ``guardtune predict`` stays out of the
training stack's memory (with the metrics and plotting code, 130 MB of a predict process).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from guardtune.backbone import DEVICES
from guardtune.errors import GuardtuneError
from guardtune.methods.base import READOUTS
from guardtune.methods.lora import LoraSettings
from guardtune.quantize import QUANTIZE_MODES


@dataclass
class TrainSettings:
    """Training hyper-parameters; invalid values are all reported at once on construction.

    ``batch_size`` is rows per process per forward pass; one optimizer step sees the global batch
    ``batch_size x processes x gradient_accumulation`` rows.
    """

    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 16
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    gradient_accumulation: int = 1
    max_length: int = 256
    seed: int = 0
    save_steps: int = 50
    dtype: str = "auto"
    # auto (CUDA when present), cpu, cuda or cuda:N; see backbone.resolve_device.
    device: str = "auto"
    # Recompute each decoder layer's activations in the backward pass: far less memory for
    # 1-8B bases at about a third more compute per step.
    gradient_checkpointing: bool = False
    # 4bit (QLoRA: NF4, double quantisation, bf16 compute) or 8bit base weights; see quantize.py.
    quantize: str | None = None
    # (alpha, temperature): mix KL to a teacher's soft labels into the loss.
    distill: tuple[float, float] | None = None
    # Share of the gold label's probability spread evenly over all labels in the training target
    # (single-label: torch's cross-entropy label smoothing; multi-label: targets y(1-e) + e/2).
    label_smoothing: float = 0.0
    # NEFTune: uniform noise of scale alpha / sqrt(tokens x hidden size) on the input embeddings
    # of every training step (the HF Trainer's ``neftune_noise_alpha``); 0 adds none.
    neftune_alpha: float = 0.0
    # Where the classifier reads the decoder: the message's last token, or an end-of-sequence
    # token appended to every message (``head`` only; see methods/base.py READOUTS).
    readout: str = "last"
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        problems = []
        if self.epochs <= 0:
            problems.append(f"--epochs: expected a positive number, found {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"--max-steps: expected a positive integer, found {self.max_steps}")
        if self.batch_size < 1:
            problems.append(f"--batch-size: expected a positive integer, found {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            problems.append(f"--lr: expected a number in (0, 1), found {self.learning_rate}")
        if self.max_length < 8:
            problems.append(f"--max-length: expected at least 8 tokens, found {self.max_length}")
        if self.gradient_accumulation < 1:
            problems.append(f"--grad-accum: expected a positive integer, found {self.gradient_accumulation}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            problems.append(f"--device: expected auto, cpu or cuda, found {self.device!r}")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            problems.append(f"--quantize: expected 4bit or 8bit, found {self.quantize!r}")
        if self.save_steps < 1:
            problems.append(f"--save-steps: expected a positive integer, found {self.save_steps}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            # int8 projections are frozen: they serve predict, eval, calibrate and serve only.
            problems.append(f"--dtype: training runs in auto, bf16 or fp32, found {self.dtype!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"--label-smoothing: expected a number in [0, 1), found {self.label_smoothing}")
        if not 0 <= self.neftune_alpha < math.inf:
            problems.append(f"--neftune-alpha: expected a number >= 0, found {self.neftune_alpha}")
        if self.readout not in READOUTS:
            problems.append(f"--readout: expected one of {', '.join(READOUTS)}, found {self.readout!r}")
        if self.distill is not None:
            alpha, temperature = self.distill
            if not 0.0 <= alpha <= 1.0 or temperature <= 0:
                problems.append(
                    "--distill: expected alpha in [0, 1] and a positive temperature, "
                    f"found {alpha},{temperature}"
                )
        if problems:
            raise GuardtuneError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
