"""Adding a method is adding one class: a fourth method, defined only here, trains, predicts,
reloads and is listed by the CLI, without a change to any other file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DataCollatorWithPadding

from guardtune.api import Classifier, train
from guardtune.backbone import Backbone
from guardtune.data.readers import load_examples
from guardtune.errors import GuardtuneError
from guardtune.export import export_model
from guardtune.methods import LoraMethod, MethodInfo, available_methods, get_method, register_method, registry
from guardtune.methods.decoder import PrefixState, decoder_states_after
from guardtune.methods.losses import label_features, single_label_loss
from guardtune.task import TaskSpec, load_task
from guardtune.train import TrainSettings

HEAD_FILE = "mean_head.safetensors"
TASK = load_task("pii-intent")
SETTINGS = TrainSettings(epochs=4, batch_size=16, learning_rate=3e-3, max_length=32, seed=7, dtype="fp32")


class MeanPoolMethod(LoraMethod):
    """LoRA + a linear head on the mean of the message's hidden states (single-label)."""

    info = MethodInfo(description="message only, linear head on the mean of its hidden states")
    logits_in_forward = True

    def __init__(self, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int) -> None:
        super().__init__(backbone, adapter_name, task, max_length)
        self.classifier = nn.Linear(backbone.hidden_size, len(task.labels), dtype=torch.float32)
        self.classifier.to(backbone.device)
        self._collator = DataCollatorWithPadding(backbone.tokenizer)

    @classmethod
    def restore(
        cls, directory: Path, backbone: Backbone, adapter_name: str, task: TaskSpec, max_length: int
    ) -> MeanPoolMethod:
        method = cls(backbone, adapter_name, task, max_length)
        method.classifier.load_state_dict(load_file(str(directory / HEAD_FILE), device=str(backbone.device)))
        return method

    def save_extras(self, directory: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()}
        save_file(state, str(directory / HEAD_FILE))

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.backbone.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def features(self, texts: list[str], labels: list[Any], soft_labels: Any = None) -> list[dict[str, Any]]:
        return label_features(self.task, self.encode(texts), labels, soft_labels)

    def _logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixState | None = None
    ) -> torch.Tensor:
        hidden = decoder_states_after(self, prefix, input_ids, attention_mask).last_hidden_state.float()
        mask = attention_mask.unsqueeze(-1).float()
        return self.classifier((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0))

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
            output["loss"] = single_label_loss(logits, labels, soft_labels, self.distill)
        return output

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixState | None = None
    ) -> torch.Tensor:
        return torch.softmax(self._logits(input_ids, attention_mask, prefix), dim=-1)


@pytest.fixture
def own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the registry for one test, so the methods a test adds leave with it."""
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))


@pytest.fixture
def mean_pool(own_registry: None) -> type[MeanPoolMethod]:
    return register_method("mean-pool")(MeanPoolMethod)


def test_a_method_defined_outside_the_package_trains_predicts_reloads_and_is_listed(
    mean_pool: type[MeanPoolMethod],
    tiny_base: str,
    toy_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert available_methods()[-1] == "mean-pool" and get_method("mean-pool") is mean_pool
    assert mean_pool.name == "mean-pool"

    report = train(
        TASK, toy_files["train"], tmp_path / "model", base=tiny_base, method="mean-pool", settings=SETTINGS
    )
    assert report.classifier.manifest.method == "mean-pool"
    rows = load_examples(toy_files["test"], TASK)
    predicted = [p.label for p in report.classifier.predict(rows.texts)]
    accuracy = np.mean([p == gold for p, gold in zip(predicted, rows.labels, strict=True)])
    assert accuracy >= 0.9, f"mean-pool: accuracy {accuracy:.2f}"

    reloaded = Classifier.load(report.directory, dtype="fp32")
    assert isinstance(reloaded.method, MeanPoolMethod)
    np.testing.assert_allclose(
        reloaded.predict_proba(rows.texts[:20]), report.classifier.predict_proba(rows.texts[:20]), atol=1e-6
    )

    capsys.readouterr()
    assert run_cli(monkeypatch, "methods") == 0
    listed = capsys.readouterr().out
    assert "mean-pool" in listed.splitlines()[0]
    assert "mean-pool: message only, linear head on the mean of its hidden states; export: none" in listed

    # Its info lists no export format: export refuses in one line before loading the base.
    with pytest.raises(GuardtuneError, match=r"uses the mean-pool method, which exports as: none"):
        export_model(report.directory, "merged", tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_registering_refuses_a_taken_name_and_a_class_without_info(own_registry: None) -> None:
    with pytest.raises(ValueError, match="'head' is already registered"):
        register_method("head")(MeanPoolMethod)

    class NoInfo(MeanPoolMethod):
        pass

    with pytest.raises(ValueError, match="NoInfo needs its own `info = MethodInfo"):
        register_method("no-info")(NoInfo)
    assert "no-info" not in available_methods()


def test_an_unknown_method_names_the_registered_ones(own_registry: None) -> None:
    with pytest.raises(
        GuardtuneError, match=r"--method: unknown method 'nope' \(available: head, label-tokens, generate\)"
    ):
        get_method("nope")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"export_formats": ("merged",)}, "merged_as is set exactly when"),
        ({"merged_as": "causal-lm"}, "merged_as is set exactly when"),
        (
            {"export_formats": ("merged", "gguf"), "merged_as": "sequence-classifier", "card_usage": "x"},
            "gguf",
        ),
        ({"export_formats": ("merged",), "merged_as": "causal-lm"}, "needs card_usage"),
    ],
)
def test_method_info_refuses_export_claims_it_cannot_keep(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        MethodInfo(description="d", **fields)


@pytest.mark.parametrize("name", available_methods())
def test_every_registered_method_states_what_the_shells_read(name: str) -> None:
    method = get_method(name)
    assert method.name == name and method.info.description
    assert isinstance(method.logits_in_forward, bool) and isinstance(method.reads_prompt, bool)
    for abstract in ("encode", "features", "forward", "scores"):
        assert abstract not in getattr(method, "__abstractmethods__", ()), f"{name}.{abstract}"
