"""Every registered method on a tiny random model: learning, save/load, and each method's own promise."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from guardtune.api import Classifier, label_file, train
from guardtune.backbone import load_backbone
from guardtune.data.readers import load_examples
from guardtune.errors import GuardtuneError
from guardtune.methods import LoraSettings, available_methods, get_method
from guardtune.methods.decoder import pad_batch
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings

# The built-in pii-intent labels with a short prompt: the tiny test tokenizer spells the real
# instruction out almost letter by letter, which only makes the tests slow.
TASK = task_from_dict({**load_task("pii-intent").to_dict(), "template": "{text}\nAnswer:"})
FAST = TrainSettings(epochs=4, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, dtype="fp32")
SETTINGS = {"head": FAST, "label-tokens": FAST, "generate": FAST}


def test_every_registered_method_has_settings_here() -> None:
    assert set(available_methods()) == set(SETTINGS)


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def trained(request, tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("methods") / request.param
    return train(
        TASK, toy_files["train"], out, base=tiny_base, method=request.param, settings=SETTINGS[request.param]
    )


def test_method_learns_the_separable_toy_task(trained, toy_files: dict[str, Path]) -> None:
    rows = load_examples(toy_files["test"], TASK)
    predicted = [p.label for p in trained.classifier.predict(rows.texts)]
    accuracy = np.mean([p == gold for p, gold in zip(predicted, rows.labels, strict=True)])
    assert accuracy >= 0.9, f"{trained.classifier.manifest.method}: accuracy {accuracy:.2f}"


def test_method_reloads_to_identical_scores(trained, toy_files: dict[str, Path]) -> None:
    texts = load_examples(toy_files["test"], TASK).texts[:20]
    before = trained.classifier.predict_proba(texts)
    np.testing.assert_allclose(
        Classifier.load(trained.directory, dtype="fp32").predict_proba(texts), before, atol=1e-6
    )
    names = {p.name for p in trained.directory.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "guardtune.json", "README.md"} <= names


def test_label_tokens_logits_equal_the_full_head_at_those_rows(tiny_base: str) -> None:
    backbone = load_backbone(tiny_base, dtype="fp32")
    method = get_method("label-tokens").create(backbone, TASK, LoraSettings(r=4), 32)
    method.eval()
    batch = pad_batch(
        backbone.tokenizer, method.encode(["whats ur snap", "gg nice game ok"]), backbone.device
    )
    with torch.inference_mode():
        restricted = method.label_logits(**batch)
        full = method.peft_model(**batch).logits  # the causal LM with every vocabulary row
        last = batch["attention_mask"].sum(dim=1) - 1
    expected = full[torch.arange(2), last][:, method.label_ids]
    torch.testing.assert_close(restricted, expected, rtol=1e-5, atol=1e-5)


def test_label_tokens_refuses_labels_with_the_same_first_token(tiny_base: str) -> None:
    backbone = load_backbone(tiny_base, dtype="fp32")
    task = task_from_dict({"name": "clash", "labels": {"game": "", "gamer": ""}, "template": "{text}:"})
    with pytest.raises(GuardtuneError, match="labels 'game' and 'gamer' both start with token"):
        get_method("label-tokens").create(backbone, task, LoraSettings(r=2), 32)


def test_generate_decodes_only_valid_answers_in_canonical_order(tiny_base: str, tmp_path: Path) -> None:
    task = load_task("pii-categories")
    backbone = load_backbone(tiny_base, dtype="fp32")
    method = get_method("generate").create(backbone, task, LoraSettings(r=4), 400)
    valid = {answer.text for answer in method.answers}
    assert len(valid) == 2**5  # safe + every non-empty subset of S1..S5 in task order
    assert "unsafe\nS1,S3" in valid and "unsafe\nS3,S1" not in valid
    texts = ["my name is bob and call me", "gg", "nice map 12", "where do u live", "ok"] * 2
    # Random LoRA weights push the untrained model towards arbitrary tokens; the trie still holds.
    with torch.no_grad():
        for name, parameter in method.peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    answers = method.generate_answers(texts)
    assert all(answer in valid for answer in answers)
    for answer in answers:
        if answer != "safe":
            codes = answer.split("\n")[1].split(",")
            assert codes == sorted(codes, key=task.label_names.index)
    scores = method.scores(**pad_batch(backbone.tokenizer, method.encode(texts), backbone.device))
    assert scores.shape == (10, 5) and bool(((scores >= 0) & (scores <= 1)).all())


def test_generate_learns_multi_label_answers(tiny_base: str, tmp_path: Path) -> None:
    task = task_from_dict(
        {
            "name": "two",
            "mode": "multi",
            "labels": {"S1": "game", "S2": "email"},
            "template": "{text}\nAnswer:",
        }
    )
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(160):
        codes = [c for c in ("S1", "S2") if rng.random() < 0.5]
        words = (["game", "score"] if "S1" in codes else []) + (["email", "mail"] if "S2" in codes else [])
        rows.append({"text": " ".join([*words, "ok"]), "labels": ",".join(codes)})
    path = tmp_path / "multi.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    settings = TrainSettings(epochs=6, batch_size=16, learning_rate=3e-3, max_length=48, seed=1, dtype="fp32")
    report = train(
        task, path, tmp_path / "model", val_path=path, base=tiny_base, method="generate", settings=settings
    )
    method = report.classifier.method
    assert method.generate_answers(["game score ok", "email mail ok", "game score email mail ok", "ok"]) == [
        "unsafe\nS1",
        "unsafe\nS2",
        "unsafe\nS1,S2",
        "safe",
    ]
    predicted = report.classifier.predict(
        ["game score ok", "email mail ok", "game score email mail ok", "ok"]
    )
    assert [p.label for p in predicted] == [["S1"], ["S2"], ["S1", "S2"], []]


def test_student_distilled_from_teacher_soft_labels_agrees_with_it(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    teacher = train(TASK, toy_files["train"], tmp_path / "teacher", base=tiny_base, settings=SETTINGS["head"])
    soft = tmp_path / "soft.csv"
    unlabeled = tmp_path / "unlabeled.csv"
    pd.read_csv(toy_files["train"])[["text"]].to_csv(unlabeled, index=False)
    frame = label_file(teacher.classifier, unlabeled, soft)
    assert {"p_none", "p_asking", "p_giving", "label"} <= set(frame.columns)
    student_settings = TrainSettings(
        epochs=4, batch_size=16, learning_rate=3e-3, max_length=32, seed=3, dtype="fp32", distill=(0.7, 2.0)
    )
    student = train(
        TASK, soft, tmp_path / "student", base=tiny_base, method="label-tokens", settings=student_settings
    )
    texts = load_examples(toy_files["test"], TASK).texts
    agree = np.mean(
        [
            a.label == b.label
            for a, b in zip(student.classifier.predict(texts), teacher.classifier.predict(texts), strict=True)
        ]
    )
    assert agree >= 0.85


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ("0.5,0.4,0.3", "teacher scores sum to 1.2000"),
        ("1.5,-0.3,-0.2", "p_none is '1.5' (expected a probability in [0, 1])"),
    ],
)
def test_bad_soft_labels_get_one_line_errors(tmp_path: Path, cells: str, expected: str) -> None:
    path = tmp_path / "soft.csv"
    path.write_text(f"text,label,p_none,p_asking,p_giving\nhi,none,1,0,0\nyo,none,{cells}\n")
    with pytest.raises(GuardtuneError, match="row 3: ") as info:
        load_examples(path, TASK)
    assert expected in str(info.value)


def test_distill_without_teacher_scores_is_refused(
    tiny_base: str, toy_files: dict[str, Path], tmp_path: Path
) -> None:
    settings = TrainSettings(max_steps=1, dtype="fp32", distill=(0.5, 2.0))
    with pytest.raises(GuardtuneError, match="no teacher scores"):
        train(TASK, toy_files["train"], tmp_path / "m", base=tiny_base, settings=settings)


@pytest.mark.parametrize("method_name", ["label-tokens", "generate"])
@pytest.mark.parametrize("task_name", ["pii-intent", "pii-categories"])
def test_prefix_reuse_gives_the_full_forward_scores(
    tiny_base_wide_window: str, method_name: str, task_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = load_task(task_name)
    if method_name == "label-tokens" and task.mode == "multi":
        pytest.skip("label-tokens is single-label only")
    from guardtune import infer
    from guardtune.infer import predict_scores

    calls = []
    monkeypatch.setattr(infer, "_fits_window", lambda *args: calls.append(args) or True)
    backbone = load_backbone(tiny_base_wide_window, dtype="fp32")
    method = get_method(method_name).create(backbone, task, LoraSettings(r=4), 400)
    with torch.no_grad():
        for name, parameter in method.peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)  # a non-trivial adapter, as after training
    texts = ["whats ur snap", "gg", "my mail is here and my street is there", "call me at home now"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reused = predict_scores(method, texts, batch_size=3, reuse_prefix=True)
    full = predict_scores(method, texts, batch_size=3, reuse_prefix=False)
    assert calls and len(method.shared_prefix) > 10  # the cached path really ran
    # The cache goes under the name the installed transformers expects (it renamed it in 5.2x).
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    np.testing.assert_allclose(reused, full, rtol=0, atol=1e-5)


def test_length_bucketing_returns_results_in_input_order(trained) -> None:
    texts = ["gg", "whats ur number and email and address", "call me", "nice score on that map level ok"]
    one_by_one = np.concatenate([trained.classifier.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(trained.classifier.predict_proba(texts, batch_size=2), one_by_one, atol=1e-5)


def test_chosen_lora_targets_adapt_only_those_layers_and_a_wrong_name_is_listed(tiny_base: str) -> None:
    from peft.tuners.lora import LoraLayer

    from guardtune.methods.lora import apply_lora

    backbone = load_backbone(tiny_base, dtype="fp32")
    apply_lora(backbone, LoraSettings(r=2, target_modules=["q_proj", "v_proj"]))
    assert backbone.peft_model is not None
    adapted = {
        name.rsplit(".", 1)[-1]
        for name, module in backbone.peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }
    assert adapted == {"q_proj", "v_proj"}
    # A chosen list must match in full: a typo names itself and what the model has.
    backbone = load_backbone(tiny_base, dtype="fp32")
    with pytest.raises(GuardtuneError, match=r"\['q_prj'\] not found in .*its Linear layers are: .*q_proj"):
        apply_lora(backbone, LoraSettings(r=2, target_modules=["q_prj", "v_proj"]))
