"""Every registered method on a tiny random model: learning, save/load, prefix reuse, batching.

Parametrised over the registry: a method added to it is tested here without an edit. Each method's
own promises are in test_methods_<method>.py.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from guardtune.api import Classifier, train
from guardtune.backbone import load_backbone
from guardtune.data.readers import load_examples
from guardtune.methods import LoraSettings, available_methods, get_method
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings

# The built-in pii-intent labels with a short prompt: the tiny test tokenizer spells the real
# instruction out almost letter by letter, which only makes the tests slow.
TASK = task_from_dict({**load_task("pii-intent").to_dict(), "template": "{text}\nAnswer:"})
FAST = TrainSettings(epochs=4, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, dtype="fp32")
# Methods that wrap messages in the task's prompt, whose shared start is cached once.
PROMPT_METHODS = [name for name in available_methods() if get_method(name).reads_prompt]


@pytest.fixture(scope="module", params=available_methods())
def trained(request, tiny_base: str, toy_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("methods") / request.param
    return train(TASK, toy_files["train"], out, base=tiny_base, method=request.param, settings=FAST)


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


@pytest.mark.parametrize("method_name", PROMPT_METHODS)
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
