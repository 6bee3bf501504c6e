"""``guardtune export`` on tiny random models: merged HF directories and GGUF files.

Models are built without training: LoRA B matrices (zero at creation) and the head get seeded
random values, so the merge changes every adapted weight and a wrong merge shows in the scores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import build_tiny_model_dir
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from guardtune.api import Classifier
from guardtune.backbone import load_backbone
from guardtune.cli import main
from guardtune.errors import GuardtuneError
from guardtune.export import export_model, merge_model
from guardtune.methods import LoraSettings, get_method
from guardtune.methods.head import HEAD_FILE
from guardtune.modeldir import Manifest
from guardtune.task import load_task, task_from_dict

SINGLE = task_from_dict({**load_task("pii-intent").to_dict(), "template": "{text}\nAnswer:"})
MULTI = load_task("pii-categories")
TEXTS = ["whats ur snap", "gg nice game", "my number is here call me", "where do u live", "win"]
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def make_model_dir(
    base: str, method: str, task, out: Path, seed: int = 0, max_length: int = 64, readout: str = "last"
) -> Path:
    """A model directory as ``guardtune train`` writes it, with seeded random adapter and head."""
    backbone = load_backbone(base, dtype="fp32")
    parts = get_method(method).create(backbone, task, LORA, max_length, readout=readout)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in parts.named_parameters():
            if "lora_B" in name or name.startswith("classifier."):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    out.mkdir(parents=True)
    parts.save(out)
    Manifest(task=task, method=method, base=base, max_length=max_length, lora=LORA.to_dict()).write(out)
    return out


@pytest.fixture(scope="module")
def gemma3_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Gemma 3 laid out as llama.cpp's gemma3 graph assumes (and transformers' GGUF loader
    defaults to): no global layer among 2 (every 6th is), query scale 1/sqrt(head_dim = 256)."""
    directory = build_tiny_model_dir(
        tmp_path_factory.mktemp("gemma3-gguf-ready"),
        seed=1,
        random_norms=True,
        head_dim=256,
        query_pre_attn_scalar=256,
        layer_types=["sliding_attention", "sliding_attention"],
        sliding_window=512,
    )
    return str(directory)


@pytest.fixture(scope="module")
def label_tokens_dir(gemma3_base: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(gemma3_base, "label-tokens", SINGLE, tmp_path_factory.mktemp("lt") / "model")


def last_token_logits(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    # The rendered prompts hold their BOS already, as vLLM tokenizes chat prompts.
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        logits = model(**batch).logits
    last = batch["attention_mask"].sum(dim=1) - 1
    return logits[torch.arange(len(prompts)), last]


# -- merged: head -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "readout"),
    [(SINGLE, "last"), (MULTI, "last"), (SINGLE, "eos")],
    ids=["single", "multi", "single-eos"],
)
def test_merged_head_loads_as_sequence_classifier_with_guardtune_scores(
    tiny_base: str, tmp_path: Path, task, readout: str
) -> None:
    source = make_model_dir(tiny_base, "head", task, tmp_path / "model", seed=3, readout=readout)
    out = export_model(source, "merged", tmp_path / "export")

    model, info = AutoModelForSequenceClassification.from_pretrained(
        out, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info  # every weight, the head included, came from the export
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Gemma3TextForSequenceClassification"]
    assert config["id2label"] == {str(i): name for i, name in enumerate(task.label_names)}
    assert config["problem_type"] == (
        "multi_label_classification" if task.mode == "multi" else "single_label_classification"
    )
    assert model.score.bias is None

    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert config["pad_token_id"] == tokenizer.pad_token_id
    lengths = batch["attention_mask"].sum(dim=1)
    last_ids = batch["input_ids"][torch.arange(len(TEXTS)), lengths - 1]
    assert bool((last_ids == tokenizer.eos_token_id).all()) == (readout == "eos"), last_ids
    with torch.inference_mode():
        logits = model.eval()(**batch).logits
    exported = logits.sigmoid() if task.mode == "multi" else logits.softmax(-1)
    expected = Classifier.load(source, dtype="fp32").predict_proba(TEXTS)
    np.testing.assert_allclose(exported.numpy(), expected, rtol=0, atol=2e-6)
    assert not np.allclose(expected, expected[0])  # the texts are told apart: the check has teeth
    card = (out / "README.md").read_text()
    assert "AutoModelForSequenceClassification" in card
    assert ("--readout eos" in card) == (readout == "eos")


def test_merged_head_with_a_bias_is_refused_in_one_line(tiny_base: str, tmp_path: Path) -> None:
    source = make_model_dir(tiny_base, "head", SINGLE, tmp_path / "model")
    state = load_file(str(source / HEAD_FILE))
    state["bias"] = torch.zeros(state["weight"].shape[0])
    save_file(state, str(source / HEAD_FILE))
    with pytest.raises(GuardtuneError, match=r"head\.safetensors: the head has a bias") as error:
        export_model(source, "merged", tmp_path / "export")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "export").exists()


# -- merged: label-tokens and generate --------------------------------------------------------


def test_merged_label_tokens_scores_like_guardtune_and_carries_vllm_keys(
    label_tokens_dir: Path, tmp_path: Path
) -> None:
    out = export_model(label_tokens_dir, "merged", tmp_path / "export")
    classifier = Classifier.load(label_tokens_dir, dtype="fp32")
    method = classifier.method
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["method"] == "no_post_processing"
    tokenizer = AutoTokenizer.from_pretrained(out)
    # vLLM turns classifier_from_token back into ids with convert_tokens_to_ids.
    assert tokenizer.convert_tokens_to_ids(config["classifier_from_token"]) == method.label_ids
    assert config["id2label"] == {str(i): name for i, name in enumerate(SINGLE.label_names)}

    # The chat template builds exactly the token ids guardtune scores.
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False) for text in TEXTS
    ]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert ids == method.encode(TEXTS)

    # What vLLM's classify conversion computes: LM-head rows of the tokens at the last prompt
    # token, softmaxed; equal to guardtune's scores.
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer.padding_side = "right"
    logits = last_token_logits(model, tokenizer, prompts)
    rows = tokenizer.convert_tokens_to_ids(config["classifier_from_token"])
    exported = logits[:, rows].softmax(-1).numpy()
    np.testing.assert_allclose(exported, classifier.predict_proba(TEXTS), rtol=0, atol=2e-6)
    record = json.loads((out / "guardtune_export.json").read_text())
    assert record["label_tokens"]["token_ids"] == method.label_ids
    assert record["prompt"]["after"].endswith("Answer:")


def test_merged_generate_is_the_merged_causal_lm_with_its_prompt(tiny_base: str, tmp_path: Path) -> None:
    source = make_model_dir(tiny_base, "generate", SINGLE, tmp_path / "model", seed=5)
    out = export_model(source, "merged", tmp_path / "export")
    merged = merge_model(source)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for name, tensor in merged.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base.state_dict()[q_proj], model.state_dict()[q_proj])  # merged, not the base
    tokenizer = AutoTokenizer.from_pretrained(out)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "gg"}], tokenize=False)
    assert rendered == merged.method.prompt.text_before + "gg" + merged.method.prompt.text_after
    assert "method" not in json.loads((out / "config.json").read_text())  # no vLLM classify keys


def test_export_refuses_an_existing_out_and_unknown_format(label_tokens_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(GuardtuneError, match="already exists"):
        export_model(label_tokens_dir, "merged", tmp_path / "taken")
    with pytest.raises(GuardtuneError, match="--format: expected one of merged, gguf"):
        export_model(label_tokens_dir, "onnx", tmp_path / "x")


# -- gguf -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged_label_tokens(label_tokens_dir: Path):
    return merge_model(label_tokens_dir)


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_gguf_holds_the_merged_weights_under_gguf_names(
    label_tokens_dir: Path, merged_label_tokens, tmp_path: Path, outtype: str
) -> None:
    path = export_model(label_tokens_dir, "gguf", tmp_path / "model.gguf", outtype=outtype)
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    assert fields["general.architecture"].contents() == "gemma3"
    assert fields["gemma3.block_count"].contents() == 2
    assert fields["gemma3.attention.key_length"].contents() == 256
    assert fields["general.file_type"].contents() == (0 if outtype == "f32" else 1)
    tokenizer = merged_label_tokens.tokenizer
    vocabulary = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    assert fields["tokenizer.ggml.tokens"].contents() == vocabulary
    assert fields["tokenizer.ggml.bos_token_id"].contents() == tokenizer.bos_token_id
    assert len(fields["tokenizer.ggml.merges"].contents()) > 0
    # llama.cpp adds BOS itself, so the prompt template leaves it out.
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    template = fields["tokenizer.chat_template"].contents()
    assert template.startswith('{{ "') and "<bos>" not in template and "Answer:" in template

    state = merged_label_tokens.model.state_dict()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, 2)
    expected = {
        names.get_name(name.rpartition(".")[0]) + ".weight": tensor
        for name, tensor in state.items()
        if name != "lm_head.weight"  # tied to the embedding
    }
    found = {tensor.name: tensor for tensor in reader.tensors}
    assert set(found) == set(expected)
    for name, tensor in expected.items():
        data = np.asarray(found[name].data).reshape(tuple(tensor.shape))
        original = tensor.numpy()
        if name.endswith("norm.weight"):
            assert data.dtype == np.float32
            original = original + np.float32(1.0)  # Gemma's norms are stored as 1 + w
        if outtype == "f32" or data.ndim == 1:
            np.testing.assert_array_equal(data.astype(np.float32), original, err_msg=name)
        else:
            assert data.dtype == np.float16
            np.testing.assert_allclose(data.astype(np.float32), original, rtol=1e-3, atol=1e-5, err_msg=name)


def test_gguf_round_trip_through_transformers_gives_the_merged_logits(
    label_tokens_dir: Path, merged_label_tokens, tmp_path: Path
) -> None:
    path = export_model(label_tokens_dir, "gguf", tmp_path / "model.gguf", outtype="f32")
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = merged_label_tokens.tokenizer
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        expected = merged_label_tokens.model(**batch).logits
        found = loaded.eval()(**batch).logits
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4)


def test_gguf_refuses_the_head_method_and_layouts_llama_cpp_runs_differently(
    tiny_base: str, tmp_path: Path
) -> None:
    head = make_model_dir(tiny_base, "head", SINGLE, tmp_path / "head")
    with pytest.raises(GuardtuneError, match=r"head method.*use --format merged"):
        export_model(head, "gguf", tmp_path / "head.gguf")
    # The shared tiny base has a global second layer; llama.cpp's gemma3 makes every 6th global.
    labels = make_model_dir(tiny_base, "label-tokens", SINGLE, tmp_path / "lt")
    with pytest.raises(GuardtuneError, match=r"differs from llama\.cpp's gemma3: layer_types"):
        export_model(labels, "gguf", tmp_path / "lt.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


def test_cli_export_writes_and_reports(
    monkeypatch: pytest.MonkeyPatch, label_tokens_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cli.gguf"
    args = ["export", "--model", label_tokens_dir, "--format", "gguf", "--out", out, "--outtype", "f32"]
    monkeypatch.setattr(sys, "argv", ["guardtune", *map(str, args)])
    main()
    assert out.is_file()
    assert str(out) in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["guardtune", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    assert "already exists" in capsys.readouterr().err
