"""One training loop for every method, on the Hugging Face Trainer.

Methods differ only through their interface (:class:`guardtune.methods.base.LoraMethod`:
``features``, ``collate``, ``forward`` returning a loss, ``trainable_state_dict``); checkpoints
hold only the trainable parameters, so they are small and ``--resume`` continues from the last
one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from accelerate import PartialState
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, f1_score
from transformers import (
    EvalPrediction,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.integrations.neftune import deactivate_neftune
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.trainer_utils import get_last_checkpoint

from guardtune.atomic import atomic_file
from guardtune.errors import GuardtuneError
from guardtune.methods.base import LoraMethod, check_method_settings
from guardtune.modeldir import read_json_object
from guardtune.train_settings import TrainSettings

# What a run was started with, beside its checkpoints: --resume refuses other settings.
RUN_FILE = "guardtune_run.json"
# Settings a resumed run may change: how long it trains, how often it saves, where it runs.
RESUMABLE_SETTINGS = ("epochs", "max_steps", "save_steps", "device", "gradient_checkpointing")
# What the Trainer names a checkpoint's weights file; ours holds only the trainable tensors.
CHECKPOINT_WEIGHTS = "model.safetensors"


def process_state(device: str = "auto") -> PartialState:
    """This process's place in an ``accelerate launch`` / ``torchrun`` run (a lone process is main).

    The first call joins the launcher's process group (gloo on CPUs, nccl on GPUs) and selects
    this rank's GPU, so tensors later put on ``cuda`` land on the right device. ``device`` is the
    ``--device`` option: ``cpu`` keeps a machine with GPUs on its CPUs.
    """
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


@dataclass
class FitResult:
    """What the loop did, for the manifest, the model card and the closing summary."""

    steps: int
    seconds: float
    examples_seen: int
    train_loss: float | None
    log_history: list[dict[str, Any]]
    processes: int = 1  # data-parallel processes that shared each global batch

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.seconds if self.seconds > 0 else 0.0


class _RowsDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


class GlobalBatchSampler(torch.utils.data.Sampler[int]):
    """Shuffle rows and group them by length in a way that depends only on the global batch.

    The Trainer's own length grouping sorts mega-batches sized from the per-process batch, so the
    row order changed with the number of processes. Here the order is a function of the global
    batch size, the seed and the epoch: accelerate hands each process consecutive slices of
    ``per-device batch`` rows, so one process with batch 16 and two with batch 8 train on the same
    16 rows at every step. Seeding from the epoch (not a running generator) lets ``--resume`` land
    on the same order in any epoch.
    """

    def __init__(self, lengths: list[int], global_batch: int, seed: int) -> None:
        self.lengths = lengths
        self.global_batch = global_batch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.global_batch, generator=generator))


class _CompactProgress(ProgressCallback):
    """The Trainer's progress bar, with the latest loss and validation scores on the bar itself
    instead of a printed dict per logging step."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        bar = getattr(self, "training_bar", None)
        if not state.is_world_process_zero or bar is None or not logs:
            return
        shown = {k.removeprefix("eval_"): v for k, v in logs.items() if k in _SHOWN_LOGS}
        if shown:
            bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)


_SHOWN_LOGS = {"loss", "eval_loss", "eval_accuracy", "eval_macro_f1", "eval_exact_match"}


class _SamplerEpoch(TrainerCallback):
    """Tell the sampler the epoch as each one begins.

    The Trainer's own ``set_epoch`` does not reach the sampler through the loader that ``--resume``
    skips into on several processes (accelerate's ``BatchSamplerShard`` does not forward it), so a
    run resumed in epoch 2 would replay epoch 0's order. ``state.epoch`` is exact here: it is
    ``epoch + steps / steps`` at an epoch's end and the checkpoint's value on resume.
    """

    def __init__(self, trainer: _TrainableOnlyTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.global_sampler is not None:
            self.trainer.global_sampler.set_epoch(math.floor(state.epoch or 0))


class _TrainableOnlyTrainer(Trainer):
    """Checkpoints only the adapter and head (MBs), not the frozen base (hundreds of MBs).

    Only the main process writes checkpoints (the Trainer's ``should_save``); every process reads
    them back on ``--resume``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.global_sampler: GlobalBatchSampler | None = None
        self.add_callback(_SamplerEpoch(self))

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset: Any = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        seed = args.data_seed if args.data_seed is not None else args.seed
        self.global_sampler = GlobalBatchSampler(
            [len(row["input_ids"]) for row in dataset], global_batch, seed
        )
        return self.global_sampler

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        method = cast(LoraMethod, self.model)  # fit hands the Trainer a method as its model
        super()._save(output_dir, state_dict=method.trainable_state_dict())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        model = cast(LoraMethod, model or self.model)
        path = Path(resume_from_checkpoint) / CHECKPOINT_WEIGHTS
        if not path.is_file():
            raise GuardtuneError(f"--resume: {resume_from_checkpoint} has no {CHECKPOINT_WEIGHTS}")
        state = load_file(str(path), device=str(next(model.parameters()).device))
        missing = sorted(set(model.trainable_state_dict()) - set(state))
        if missing:
            raise GuardtuneError(
                f"--resume: {path} lacks {len(missing)} trainable tensors (first: {missing[0]}); "
                "was it written with other LoRA settings or another method?"
            )
        model.load_state_dict(state, strict=False)


def _compute_metrics(mode: str) -> Any:
    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits = np.asarray(prediction.predictions)
        gold = np.asarray(prediction.label_ids)
        if mode == "single":
            predicted = logits.argmax(axis=-1)
            return {
                "accuracy": float(accuracy_score(gold, predicted)),
                "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0)),
            }
        active = logits >= 0.0  # sigmoid(logit) >= 0.5
        return {
            "exact_match": float(accuracy_score(gold.astype(bool), active)),
            "macro_f1": float(f1_score(gold.astype(bool), active, average="macro", zero_division=0)),
        }

    return compute


def run_record(method: LoraMethod, settings: TrainSettings) -> dict[str, Any]:
    """What a run was started with, as JSON would read it back: the method, task, base and every
    training setting (the readout among them) but those a resumed run may change."""
    kept = {k: v for k, v in settings.to_dict().items() if k not in RESUMABLE_SETTINGS and k != "lora"}
    # One key per LoRA field, so a refusal names the one that differs (``lora.r``).
    kept.update({f"lora.{k}": v for k, v in settings.lora.to_dict().items()})
    record = {
        "method": method.name,
        "task": method.task.name,
        "labels": method.task.label_names,
        "base": str(method.backbone.base),
        **kept,
    }
    return cast(dict[str, Any], json.loads(json.dumps(record)))


def check_resumed_run(work_dir: Path, record: dict[str, Any]) -> None:
    """Refuse to resume a run with settings other than those it was started with.

    A checkpoint holds weights, not what they were trained for: resumed with another readout,
    LoRA shape or learning rate, training would go on silently as a different run. Runs started
    before the record was written are resumed unchecked.

    Raises:
        GuardtuneError: one line naming the record file and every setting that differs.
    """
    path = work_dir / RUN_FILE
    if not path.is_file():
        return
    started = read_json_object(path)
    differing = [key for key in sorted(set(started) | set(record)) if started.get(key) != record.get(key)]
    if differing:
        changes = "; ".join(
            f"{key}: started with {started.get(key)!r}, now {record.get(key)!r}" for key in differing
        )
        raise GuardtuneError(
            f"--resume: {path}: {changes} (resume with the options the run was started with, "
            "or train afresh without --resume)"
        )


def fit(
    method: LoraMethod,
    train_texts: list[str],
    train_labels: list[Any],
    settings: TrainSettings,
    work_dir: Path,
    val_texts: list[str] | None = None,
    val_labels: list[Any] | None = None,
    resume: bool = False,
    callbacks: list[TrainerCallback] | None = None,
    soft_labels: np.ndarray | None = None,
) -> FitResult:
    """Train ``method`` in place on the given rows, checkpointing into ``work_dir``.

    Args:
        method: a method object from :mod:`guardtune.methods`, built on a backbone.
        train_texts, train_labels: training rows (labels as the task defines them).
        settings: hyper-parameters.
        work_dir: where checkpoints go; ``resume`` continues from the newest one there.
        val_texts, val_labels: optional validation rows, evaluated at the end of every epoch.
        resume: continue from the newest checkpoint in ``work_dir``.
        callbacks: extra ``transformers.TrainerCallback`` objects (logging, early stopping).
        soft_labels: a teacher's ``(rows, labels)`` probabilities, used when ``settings.distill``.

    Raises:
        GuardtuneError: ``resume`` with no checkpoint to resume from.
    """
    checkpoint = None
    if resume:
        checkpoint = get_last_checkpoint(str(work_dir)) if work_dir.is_dir() else None
        if checkpoint is None:
            raise GuardtuneError(f"--resume: no checkpoint in {work_dir} to resume from")
    if settings.distill is not None and soft_labels is None:
        raise GuardtuneError("--distill: the training file has no teacher scores (p_<label> columns)")
    check_method_settings(type(method), settings)
    if settings.readout != method.readout:
        # The readout is part of the model (create's), not a training knob to switch mid-way.
        raise GuardtuneError(
            f"--readout {settings.readout}: this {method.name} model reads at {method.readout}"
        )
    state = process_state(settings.device)
    record = run_record(method, settings)
    if checkpoint is not None:
        check_resumed_run(work_dir, record)
    elif state.is_main_process:
        work_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(work_dir / RUN_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    method.distill = settings.distill
    method.label_smoothing = settings.label_smoothing
    teacher = soft_labels if settings.distill is not None else None
    train_set = _RowsDataset(method.features(train_texts, train_labels, teacher))
    val_set = None
    if val_texts and val_labels:
        val_set = _RowsDataset(method.features(val_texts, val_labels))
    processes = state.num_processes
    # Rows per optimizer step over every process: `--max-steps` and epochs count global batches.
    per_step = settings.batch_size * settings.gradient_accumulation * processes
    steps_per_epoch = max(1, math.ceil(len(train_set) / per_step))
    total_steps = settings.max_steps or math.ceil(steps_per_epoch * settings.epochs)
    eval_every = min(steps_per_epoch, total_steps)
    # The Trainer runs where the backbone was loaded (``--device``), never on a device of its own.
    use_cpu = method.backbone.device.type == "cpu"
    args = TrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=max(settings.batch_size, 32),
        gradient_accumulation_steps=settings.gradient_accumulation,
        num_train_epochs=settings.epochs,
        max_steps=total_steps,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,
        lr_scheduler_type="linear",
        eval_strategy="steps" if val_set is not None else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=min(settings.save_steps, total_steps),
        save_total_limit=2,
        logging_steps=max(1, min(10, total_steps // 10)),
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=use_cpu,
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        # Every trainable tensor takes part in each forward pass; DDP's search for unused ones
        # would cost an extra pass over the graph per step.
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
        prediction_loss_only=not method.logits_in_forward,
        # The Trainer hooks the embedding that the method's get_input_embeddings returns.
        neftune_noise_alpha=settings.neftune_alpha or None,
    )
    trainer = _TrainableOnlyTrainer(
        model=method,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=method.collate,
        # Methods whose forward gives per-label logits are scored each epoch; others report loss.
        compute_metrics=_compute_metrics(method.task.mode) if method.logits_in_forward else None,
        callbacks=callbacks,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_CompactProgress())
    base_model = method.backbone.model
    if settings.gradient_checkpointing:
        # Set on the base model, not through TrainingArguments: the Trainer would call it on the
        # method object, which is not a transformers model. Non-reentrant checkpointing computes
        # the LoRA gradients although the frozen embeddings' outputs need no gradient.
        base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if settings.gradient_checkpointing:
            base_model.gradient_checkpointing_disable()  # a shared backbone goes back as it was
        noise_hook = getattr(trainer, "neftune_hook_handle", None)
        if noise_hook is not None:
            # The Trainer removes its NEFTune hook only after a run that ends well; a shared backbone
            # must not keep noisy embeddings after an error or an interruption.
            deactivate_neftune(method, noise_hook)
    seconds = time.perf_counter() - started
    method.eval()
    first_step = 0
    if checkpoint is not None:
        first_step = int(Path(checkpoint).name.rsplit("-", 1)[-1])
    steps_run = trainer.state.global_step - first_step
    return FitResult(
        steps=trainer.state.global_step,
        seconds=seconds,
        examples_seen=steps_run * per_step,
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        log_history=list(trainer.state.log_history),
        processes=processes,
    )
