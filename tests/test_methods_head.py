"""The head method on a tiny random model: learning, save/load, dual path, resume."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from guardtune.api import Classifier, train
from guardtune.backbone import load_backbone
from guardtune.data.readers import load_examples
from guardtune.errors import GuardtuneError
from guardtune.methods import LoraSettings, get_method
from guardtune.methods.head import HEAD_FILE
from guardtune.task import load_task
from guardtune.train import TrainSettings, fit

TASK = load_task("pii-intent")
FAST = TrainSettings(epochs=4, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, dtype="fp32")


@pytest.fixture(scope="module")
def trained(tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs") / "toy"
    return train(TASK, toy_files["train"], out, val_path=toy_files["val"], base=tiny_base, settings=FAST)


def test_separable_toy_task_is_learned(trained, toy_files: dict[str, Path]) -> None:
    rows = load_examples(toy_files["test"], TASK)
    predictions = trained.classifier.predict(rows.texts)
    accuracy = np.mean([p.label == gold for p, gold in zip(predictions, rows.labels, strict=True)])
    assert accuracy >= 0.9  # chance is 1/3


def test_model_directory_holds_the_contract_files(trained) -> None:
    names = {p.name for p in trained.directory.iterdir()}
    assert {
        "guardtune.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "head.safetensors",
        "README.md",
    } <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    assert not trained.directory.with_name(trained.directory.name + ".incomplete").exists()
    card = (trained.directory / "README.md").read_text()
    for fragment in (
        "base model",
        "LoRA",
        "Data (rows per label)",
        "Evaluation: validation",
        "Classifier.load",
    ):
        assert fragment in card


def test_save_then_load_gives_identical_scores(trained, toy_files: dict[str, Path]) -> None:
    texts = load_examples(toy_files["test"], TASK).texts
    before = trained.classifier.predict_proba(texts)
    reloaded = Classifier.load(trained.directory, dtype="fp32")
    np.testing.assert_allclose(reloaded.predict_proba(texts), before, rtol=0, atol=1e-6)
    assert reloaded.predict(texts[0]).label == trained.classifier.predict(texts[0]).label


def test_predict_returns_labels_with_scores_and_proba_matrix(trained) -> None:
    one = trained.classifier.predict("whats ur number")
    assert one.label in TASK.label_names
    assert set(one.scores) == set(TASK.label_names)
    matrix = trained.classifier.predict_proba(["gg", "my mail is here", "where do u live"])
    assert matrix.shape == (3, 3)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)


def test_merged_adapter_scores_equal_the_unmerged_adapter(trained) -> None:
    texts = ["whats ur snap", "gg nice", "my number is 0412 555 019"]
    merged = Classifier.load(trained.directory, dtype="fp32")
    unmerged = Classifier.load(trained.directory, dtype="fp32", merge=False)
    assert merged.method.peft_model.get_model_status().merged_adapters == [merged.method.adapter_name]
    assert unmerged.method.peft_model.get_model_status().merged_adapters == []
    np.testing.assert_allclose(merged.predict_proba(texts), unmerged.predict_proba(texts), atol=1e-5)


def test_adapter_disabled_is_exactly_the_base_model(tiny_base: str, trained) -> None:
    classifier = Classifier.load(trained.directory, dtype="fp32", merge=False)
    plain = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    ids = classifier.method.backbone.tokenizer(
        ["whats ur snap", "gg nice"], return_tensors="pt", padding=True
    )
    peft_model = classifier.method.peft_model
    with torch.inference_mode():
        with peft_model.disable_adapter():
            guarded_off = peft_model(**ids).logits
        adapted = peft_model(**ids).logits
        base = plain(**ids).logits
    torch.testing.assert_close(guarded_off, base, rtol=0, atol=0)
    assert not torch.allclose(adapted, base)  # the trained adapter does change the model


def test_multi_label_head_trains_with_positive_weights(tiny_base: str, tmp_path: Path) -> None:
    task = load_task("pii-categories")
    backbone = load_backbone(tiny_base, dtype="fp32")
    method = get_method("head").create(backbone, task, LoraSettings(r=4), 32, [["S1"], [], ["S1", "S3"], []])
    assert method.pos_weight.tolist() == [1.0, 1.0, 3.0, 1.0, 1.0]  # S1: 2 neg / 2 pos, S3: 3 / 1
    texts = ["my name is x", "gg", "call me now", "nice map"] * 8
    labels = [["S1"], [], ["S1", "S3"], []] * 8
    settings = TrainSettings(max_steps=3, batch_size=8, max_length=16, dtype="fp32")
    result = fit(method, texts, labels, settings, tmp_path / "work")
    assert result.steps == 3
    scores = method.scores(**_batch(method, texts[:4]))
    assert scores.shape == (4, 5)
    assert ((scores >= 0) & (scores <= 1)).all()


def _batch(method, texts):
    from guardtune.methods.decoder import pad_batch

    return pad_batch(method.backbone.tokenizer, method.encode(texts), method.backbone.device)


def test_two_models_share_one_backbone(trained, tiny_base: str, tmp_path: Path, toy_files) -> None:
    # A second model on the same base, trained with another seed.
    settings = TrainSettings(
        max_steps=5, batch_size=16, learning_rate=3e-3, max_length=32, seed=99, dtype="fp32"
    )
    other = train(TASK, toy_files["train"], tmp_path / "other", base=tiny_base, settings=settings)
    texts = ["whats ur snap", "gg nice map", "call me at my street"]
    alone = [
        Classifier.load(d, dtype="fp32").predict_proba(texts) for d in (trained.directory, other.directory)
    ]
    shared = load_backbone(tiny_base, dtype="fp32")
    first = Classifier.load(trained.directory, backbone=shared, adapter_name="pii")
    second = Classifier.load(other.directory, backbone=shared, adapter_name="pii-2")
    for _ in range(2):  # alternating requests switch adapters correctly
        np.testing.assert_allclose(first.predict_proba(texts), alone[0], atol=1e-6)
        np.testing.assert_allclose(second.predict_proba(texts), alone[1], atol=1e-6)
    assert not np.allclose(alone[0], alone[1])
    assert sorted(shared.peft_model.peft_config) == ["pii", "pii-2"]


def test_a_failed_load_leaves_a_shared_backbone_as_it_was(trained, tiny_base: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(trained.directory, broken)
    save_file({"weight": torch.zeros(2, 2)}, str(broken / HEAD_FILE))
    shared = load_backbone(tiny_base, dtype="fp32")
    first = Classifier.load(trained.directory, backbone=shared, adapter_name="pii")
    before = first.predict_proba(["whats ur snap"])
    with pytest.raises(GuardtuneError, match="head tensors"):
        Classifier.load(broken, backbone=shared, adapter_name="pii-broken")
    assert list(shared.peft_model.peft_config) == ["pii"]
    np.testing.assert_allclose(first.predict_proba(["whats ur snap"]), before, atol=1e-6)
