"""The training loop: resume from a light checkpoint, distillation from a teacher's soft labels,
label smoothing."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import TrainerCallback

from guardtune.api import label_file, train
from guardtune.backbone import load_backbone
from guardtune.data.readers import load_examples
from guardtune.errors import GuardtuneError
from guardtune.methods import LoraSettings, get_method
from guardtune.methods.losses import multi_label_loss, single_label_loss
from guardtune.task import load_task, task_from_dict
from guardtune.train import RUN_FILE, TrainSettings, fit

TASK = load_task("pii-intent")
# The same labels with a short prompt, for the label-tokens student (the tiny test tokenizer spells
# the real instruction out almost letter by letter, which only makes the tests slow).
SHORT_PROMPT = task_from_dict({**TASK.to_dict(), "template": "{text}\nAnswer:"})
FAST = TrainSettings(epochs=4, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, dtype="fp32")


class _Interrupt(TrainerCallback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt


def _trainable(method) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in method.trainable_state_dict().items()}


def test_resume_continues_where_it_stopped(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    rows = load_examples(toy_files["train"], TASK)
    settings = TrainSettings(max_steps=6, save_steps=3, batch_size=8, max_length=32, seed=5, dtype="fp32")

    def fresh():
        torch.manual_seed(settings.seed)
        backbone = load_backbone(tiny_base, dtype="fp32")
        return get_method("head").create(backbone, TASK, settings.lora, settings.max_length)

    straight = fresh()
    fit(straight, rows.texts, rows.labels, settings, tmp_path / "straight")

    interrupted = fresh()
    with pytest.raises(KeyboardInterrupt):
        fit(
            interrupted,
            rows.texts,
            rows.labels,
            settings,
            tmp_path / "resumed",
            callbacks=[_Interrupt(4)],
        )
    checkpoint = tmp_path / "resumed" / "checkpoint-3"
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert all("lora_" in k or k.startswith("classifier.") for k in saved)  # only trainable parts

    resumed = fresh()
    result = fit(resumed, rows.texts, rows.labels, settings, tmp_path / "resumed", resume=True)
    assert result.steps == 6
    assert result.examples_seen == 3 * 8  # only steps 4..6 ran again
    expected = _trainable(straight)
    for name, tensor in _trainable(resumed).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-4, atol=1e-5)


def test_resume_refuses_settings_the_run_was_not_started_with(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    rows = load_examples(toy_files["train"], TASK)
    settings = TrainSettings(
        max_steps=4, save_steps=2, batch_size=8, max_length=32, seed=5, dtype="fp32", readout="eos"
    )

    def fresh(readout: str, lora: LoraSettings = settings.lora):
        torch.manual_seed(settings.seed)
        backbone = load_backbone(tiny_base, dtype="fp32")
        return get_method("head").create(backbone, TASK, lora, settings.max_length, readout=readout)

    work = tmp_path / "run.incomplete"
    with pytest.raises(KeyboardInterrupt):
        fit(fresh("eos"), rows.texts, rows.labels, settings, work, callbacks=[_Interrupt(3)])
    record = json.loads((work / RUN_FILE).read_text())
    assert record["readout"] == "eos" and record["method"] == "head" and record["lora.r"] == 16
    assert "max_steps" not in record  # a resumed run may train for longer

    # Resumed without --readout eos: refused in one line naming the file and the setting.
    with pytest.raises(GuardtuneError) as error:
        fit(fresh("last"), rows.texts, rows.labels, replace(settings, readout="last"), work, resume=True)
    message = str(error.value)
    assert "\n" not in message and str(work / RUN_FILE) in message
    assert "readout: started with 'eos', now 'last'" in message
    # Another LoRA rank and learning rate: both named.
    other = replace(settings, learning_rate=1e-3, lora=replace(settings.lora, r=4))
    both = r"learning_rate: started with 0\.0005, now 0\.001; lora\.r: started with 16, now 4 "
    with pytest.raises(GuardtuneError, match=both):
        fit(fresh("eos", other.lora), rows.texts, rows.labels, other, work, resume=True)
    # The same settings with more steps resume and finish.
    longer = replace(settings, max_steps=6)
    assert fit(fresh("eos"), rows.texts, rows.labels, longer, work, resume=True).steps == 6

    (work / RUN_FILE).write_text("[1, 2]")
    with pytest.raises(GuardtuneError, match=r"guardtune_run\.json: expected a JSON object"):
        fit(fresh("eos"), rows.texts, rows.labels, settings, work, resume=True)


def test_resume_without_checkpoint_is_an_error(tiny_base: str, tmp_path: Path) -> None:
    from guardtune.errors import GuardtuneError

    backbone = load_backbone(tiny_base, dtype="fp32")
    method = get_method("head").create(backbone, TASK, LoraSettings(r=2), 16)
    with pytest.raises(GuardtuneError, match="no checkpoint"):
        fit(method, ["a"], ["none"], TrainSettings(max_steps=1), tmp_path / "nothing", resume=True)


def test_student_distilled_from_teacher_soft_labels_agrees_with_it(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    teacher = train(SHORT_PROMPT, toy_files["train"], tmp_path / "teacher", base=tiny_base, settings=FAST)
    soft = tmp_path / "soft.csv"
    unlabeled = tmp_path / "unlabeled.csv"
    pd.read_csv(toy_files["train"])[["text"]].to_csv(unlabeled, index=False)
    frame = label_file(teacher.classifier, unlabeled, soft)
    assert {"p_none", "p_asking", "p_giving", "label"} <= set(frame.columns)
    student_settings = TrainSettings(
        epochs=4, batch_size=16, learning_rate=3e-3, max_length=32, seed=3, dtype="fp32", distill=(0.7, 2.0)
    )
    student = train(
        SHORT_PROMPT,
        soft,
        tmp_path / "student",
        base=tiny_base,
        method="label-tokens",
        settings=student_settings,
    )
    texts = load_examples(toy_files["test"], SHORT_PROMPT).texts
    agree = np.mean(
        [
            a.label == b.label
            for a, b in zip(student.classifier.predict(texts), teacher.classifier.predict(texts), strict=True)
        ]
    )
    assert agree >= 0.85


def test_distill_without_teacher_scores_is_refused(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    settings = TrainSettings(max_steps=1, dtype="fp32", distill=(0.5, 2.0))
    with pytest.raises(GuardtuneError, match="no teacher scores"):
        train(SHORT_PROMPT, toy_files["train"], tmp_path / "m", base=tiny_base, settings=settings)


def test_label_smoothing_reaches_the_loss_of_each_method(tiny_base: str, tmp_path: Path) -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    gold = torch.tensor([0, 1])
    log_p = torch.log_softmax(logits, dim=-1)
    # (1 - e) * CE(gold) + e * the mean over labels of -log p: torch's definition, written out.
    expected = (0.8 * -log_p[[0, 1], gold] + 0.2 * -log_p.mean(dim=1)).mean()
    torch.testing.assert_close(single_label_loss(logits, gold, smoothing=0.2), expected)
    multi_gold = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    ones = torch.ones(3)
    torch.testing.assert_close(
        multi_label_loss(logits, multi_gold, ones, smoothing=0.2),
        nn.functional.binary_cross_entropy_with_logits(logits, multi_gold * 0.8 + 0.1),
    )
    # A rare label's weight (up to 20) weighs its positive rows; a negative row's best score stays
    # at smoothing / 2 and a positive's at 1 - smoothing / 2 (the loss is flat there).
    for gold_value, best in ((0.0, 0.05), (1.0, 0.95)):
        logit = torch.logit(torch.tensor([[best]])).requires_grad_()
        multi_label_loss(logit, torch.tensor([[gold_value]]), torch.tensor([20.0]), smoothing=0.1).backward()
        assert logit.grad is not None and abs(float(logit.grad)) < 1e-6
    backbone = load_backbone(tiny_base, dtype="fp32")
    texts, labels = ["hi there", "whats ur snap"], ["none", "asking"]
    settings = TrainSettings(max_steps=1, batch_size=2, dtype="fp32", label_smoothing=0.3)
    for name, task in (("head", TASK), ("label-tokens", SHORT_PROMPT)):
        method = get_method(name).create(backbone, task, LoraSettings(r=2), 16)
        fit(method, texts, labels, settings, tmp_path / name)
        batch = method.collate(method.features(texts, labels))
        output = method(**batch)
        torch.testing.assert_close(
            output["loss"],
            nn.functional.cross_entropy(output["logits"], batch["labels"], label_smoothing=0.3),
        )
    moderation = load_task("moderation")
    method = get_method("head").create(
        backbone, moderation, LoraSettings(r=2), 16, [[], ["unsafe", "violence"]]
    )
    fit(method, ["hi there", "i will hurt you"], [[], ["unsafe", "violence"]], settings, tmp_path / "multi")
    batch = method.collate(method.features(["hi there", "i will hurt you"], [[], ["unsafe", "violence"]]))
    output = method(**batch)
    weights = method.get_buffer("pos_weight")
    mask = batch.get("label_mask")
    expected = multi_label_loss(output["logits"], batch["labels"], weights, label_mask=mask, smoothing=0.3)
    torch.testing.assert_close(output["loss"], expected)
    assert not torch.allclose(
        output["loss"], multi_label_loss(output["logits"], batch["labels"], weights, label_mask=mask)
    )


def test_label_smoothing_is_refused_where_it_cannot_apply(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(GuardtuneError, match=r"--label-smoothing: expected a number in \[0, 1\), found 1.0"):
        TrainSettings(label_smoothing=1.0)
    settings = TrainSettings(max_steps=1, dtype="fp32", label_smoothing=0.1)
    with pytest.raises(
        GuardtuneError, match="--label-smoothing: the generate method trains on exact answers"
    ):
        train(
            SHORT_PROMPT,
            toy_files["train"],
            tmp_path / "m",
            base=tiny_base,
            method="generate",
            settings=settings,
        )
    assert not (tmp_path / "m").exists()


def test_neftune_noise_moves_training_and_leaves_prediction_alone(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(GuardtuneError, match=r"--neftune-alpha: expected a number >= 0, found"):
            TrainSettings(neftune_alpha=bad)
    rows = load_examples(toy_files["train"], TASK)

    def fresh():
        torch.manual_seed(3)
        return get_method("head").create(load_backbone(tiny_base, dtype="fp32"), TASK, LoraSettings(r=2), 32)

    def trained(alpha: float, work: str, method=None, callbacks: list | None = None):
        method = method or fresh()
        settings = TrainSettings(
            max_steps=2, batch_size=8, max_length=32, seed=3, dtype="fp32", neftune_alpha=alpha
        )
        fit(method, rows.texts, rows.labels, settings, tmp_path / work, callbacks=callbacks)
        return method

    plain, noisy, noisy_again = trained(0.0, "plain"), trained(5.0, "noisy"), trained(5.0, "again")
    weights = [_trainable(m) for m in (plain, noisy, noisy_again)]
    # The noise is drawn from torch's seeded stream: the same alpha and seed train the same weights,
    # and the noise reached training, since the weights differ from the run without it.
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # The Trainer removes its hook after training: predicting is deterministic again.
    embedding = noisy.get_input_embeddings()
    assert not embedding._forward_hooks and not hasattr(embedding, "neftune_noise_alpha")
    ids = torch.tensor([[1, 2, 3]])
    noisy.train()
    torch.testing.assert_close(embedding(ids), embedding(ids))
    # Also after a run that stops early: a shared backbone must not keep adding noise.
    stopped = fresh()
    with pytest.raises(KeyboardInterrupt):
        trained(5.0, "interrupted", stopped, callbacks=[_Interrupt(at_step=1)])
    embedding = stopped.get_input_embeddings()
    assert not embedding._forward_hooks and not hasattr(embedding, "neftune_noise_alpha")
