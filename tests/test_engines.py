"""guardtune's exports in the engines they are for: llama.cpp (llama-cpp-python) and vLLM.

Each engine lives in its own virtual environment under ``.engines/`` (``make engines``); its
code runs there as a driver script (scripts/engine_drivers/) that reads messages and writes
token ids, scores and answers as JSON, compared here with guardtune's own predictions. The guards
are the embedded Gemma 3 270M briefly trained on synthetic ``pii-intent`` rows, one per method
(``GUARDTUNE_ENGINE_TRAIN_STEPS`` steps; kept in ``GUARDTUNE_ENGINE_GUARDS`` when it is set, so
the next run and ``benchmarks/bench_engines.py`` reuse them). Each engine tokenizes the rendered
prompt itself, as it would for a user, and its ids must be guardtune's. Run with
``make test-engines`` (``pytest -m engines``); the default run leaves these tests out, and
without the engines they skip, naming what is missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import load_script

pytestmark = pytest.mark.engines

ROOT = Path(__file__).resolve().parents[1]
engines = load_script(ROOT / "scripts" / "engine_drivers" / "run.py")

# How many messages each engine scores; GUARDTUNE_ENGINE_MESSAGES lowers it on a busy machine.
N_MESSAGES = int(os.environ.get("GUARDTUNE_ENGINE_MESSAGES", "200"))
# Optimizer steps of each guard's training (batch 8): enough to move it off the base's answers.
TRAIN_STEPS = int(os.environ.get("GUARDTUNE_ENGINE_TRAIN_STEPS", "24"))
TASK = "pii-intent"


@pytest.fixture(scope="module", autouse=True)
def _selected(request: pytest.FixtureRequest) -> None:
    # Minutes of training and engine start-up: only when asked for by marker (make test-engines).
    if "engines" not in (request.config.getoption("markexpr") or "").replace("not engines", ""):
        pytest.skip("engine tests run with `make test-engines` (pytest -m engines)")


def need(name: str) -> None:
    reason = engines.missing_engine(name)
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def messages() -> list[str]:
    from guardtune.data.synth import generate

    return [str(text) for text in generate(TASK, N_MESSAGES, seed=20)["text"]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


def trained_guard(method: str, workdir: Path) -> Path:
    """A guard of ``method`` trained on synthetic rows (or the one a previous run kept)."""
    from guardtune.api import train
    from guardtune.data.synth import generate
    from guardtune.train import TrainSettings

    keep = os.environ.get("GUARDTUNE_ENGINE_GUARDS")
    out = (Path(keep) if keep else workdir) / f"{method}-{TRAIN_STEPS}steps"
    if (out / "guardtune.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    data = workdir / "train.csv"
    if not data.exists():
        generate(TASK, 8 * TRAIN_STEPS, seed=3).to_csv(data, index=False)
        generate(TASK, 24, seed=4).to_csv(workdir / "val.csv", index=False)
    settings = TrainSettings(
        max_steps=TRAIN_STEPS, batch_size=8, max_length=128, dtype="fp32", device="cpu", save_steps=10_000
    )
    train(TASK, data, out, val_path=workdir / "val.csv", method=method, settings=settings, overwrite=True)
    return out


class Guard:
    """A briefly trained guard of one method, guardtune's predictions and its exports."""

    def __init__(self, method: str, workdir: Path, messages: list[str]) -> None:
        from guardtune.api import Classifier

        self.directory = trained_guard(method, workdir)
        self.classifier = Classifier.load(self.directory, dtype="fp32")
        self.method = self.classifier.method
        self.scores = self.classifier.predict_proba(messages, calibrated=False)
        self.labels = [self.classifier.labels[i] for i in self.scores.argmax(axis=1)]
        self.token_ids = [list(ids) for ids in self.method.encode(messages)] if method != "head" else []
        self.messages = messages
        self.exports: dict[str, Path] = {}
        self.workdir = workdir
        self.name = method

    def export(self, fmt: str) -> Path:
        from guardtune.export import export_model

        if fmt not in self.exports:
            out = self.workdir / (f"{self.name}.gguf" if fmt == "gguf" else f"{self.name}-merged")
            self.exports[fmt] = export_model(self.directory, fmt, out)
        return self.exports[fmt]


_guards: dict[str, Guard] = {}


@pytest.fixture(scope="module")
def guard(workdir: Path, messages: list[str]) -> Any:
    def get(method: str) -> Guard:
        if method not in _guards:
            _guards[method] = Guard(method, workdir, messages)
        return _guards[method]

    yield get
    _guards.clear()


def assert_agrees(result: dict[str, Any], guard: Guard, tolerance: float) -> np.ndarray:
    """Every label equal to guardtune's and every score within ``tolerance``; the scores."""
    scores = np.array([row["scores"] for row in result["rows"]])
    assert scores.shape == guard.scores.shape
    labels = [guard.classifier.labels[i] for i in scores.argmax(axis=1)]
    differing = [i for i, (a, b) in enumerate(zip(labels, guard.labels, strict=True)) if a != b]
    worst = float(np.abs(scores - guard.scores).max())
    print(
        f"{result['engine']} {result['version']}: {len(labels) - len(differing)} of {len(labels)} "
        f"labels equal, max |score difference| {worst:.5f}"
    )
    assert not differing, f"{len(differing)} labels differ, first at message {differing[0]}; max |d| {worst}"
    assert worst <= tolerance, f"max |score difference| {worst:.4f} > {tolerance}"
    return scores


def greedy_agreement(result: dict[str, Any], guard: Guard) -> float:
    """Share of the engine's free greedy answers that start with guardtune's label."""
    greedy = [row["greedy"].strip() for row in result["rows"]]
    return float(np.mean([g.startswith(label) for g, label in zip(greedy, guard.labels, strict=True)]))


# -- llama.cpp ------------------------------------------------------------------------------------


def llama_request(guard: Guard, messages: list[str], label_ids: list[int], answers: list[str]) -> dict:
    return {
        "model": str(guard.export("gguf")),
        "messages": messages,
        "label_token_ids": label_ids,
        "answers": answers,
        "generate": bool(answers),
        # One thread: on a machine whose cores are busy, llama.cpp's threads wait on each other.
        "threads": 1,
    }


def assert_tokenizes_like_guardtune(result: dict[str, Any], guard: Guard, engine: str) -> None:
    """The engine's ids for the export's chat template are guardtune's, prompt for prompt.

    The engine renders the template around each message and tokenizes the whole string; guardtune
    does the same (a message's last ``?`` and the template's closing quote are one token, ``?"``,
    in Gemma's vocabulary), so the engine scores what guardtune scores.
    """
    own = [row["token_ids"] for row in result["rows"]]
    differing = [i for i, (a, b) in enumerate(zip(own, guard.token_ids, strict=True)) if a != b]
    equal = len(own) - len(differing)
    print(f"{engine}: its ids of the rendered prompt equal guardtune's on {equal} of {len(own)} prompts")
    assert not differing, f"message {differing[0]}: {guard.messages[differing[0]]!r}"


def test_llama_cpp_tokenizes_the_rendered_prompts_as_guardtune(messages: list[str]) -> None:
    """Seconds, no training: the embedded base's own GGUF vocabulary, the rendered prompts."""
    need("llama")
    from transformers import AutoTokenizer

    from guardtune.backbone import EMBEDDED_BASES, _embedded_gguf, resolve_base_dir
    from guardtune.methods.prompting import PromptEncoder
    from guardtune.task import load_task

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base_dir("gemma-3-270m")))
    prompt = PromptEncoder.for_task(load_task(TASK), tokenizer, 256)
    ids = prompt.encode(messages)
    bos = tokenizer.bos_token
    assert prompt.text_before.startswith(bos)  # llama.cpp adds BOS itself
    rendered = [prompt.text_before[len(bos) :] + m + prompt.text_after for m in messages]
    gguf = _embedded_gguf(EMBEDDED_BASES["gemma-3-270m"])
    result = engines.run_driver("llama", {"model": str(gguf), "vocab_only": True, "prompts": rendered})
    apart = [
        prompt.prefix + tokenizer(m, add_special_tokens=False)["input_ids"] + prompt.suffix for m in messages
    ]
    split = sum(a != b for a, b in zip(apart, ids, strict=True))
    print(f"the message tokenized apart from the template: {split} of {len(ids)} prompts differ")
    own = [row["token_ids"] for row in result["rows"]]
    differing = [i for i, (a, b) in enumerate(zip(own, ids, strict=True)) if a != b]
    equal = len(ids) - len(differing)
    print(f"llama.cpp tokenizer of the base GGUF: {equal} of {len(ids)} prompts are guardtune's ids")
    assert not differing, f"message {differing[0]}: {messages[differing[0]]!r}"


def test_llama_cpp_scores_the_label_tokens_gguf_like_guardtune(guard, messages: list[str]) -> None:
    need("llama")
    lt = guard("label-tokens")
    result = engines.run_driver("llama", llama_request(lt, messages, list(lt.method.label_ids), []))
    assert_tokenizes_like_guardtune(result, lt, "llama.cpp")
    # f16 tensors in the file against guardtune's fp32: a few thousandths apart.
    assert_agrees(result, lt, tolerance=0.05)


def test_llama_cpp_answers_the_generate_gguf_like_guardtune(guard, messages: list[str]) -> None:
    need("llama")
    gen = guard("generate")
    prefix = gen.method.prompt.answer_prefix
    answers = [prefix + name for name in gen.classifier.labels]
    firsts = [answer.tokens[0] for answer in gen.method.answers]
    result = engines.run_driver("llama", llama_request(gen, messages, firsts, answers))
    assert_tokenizes_like_guardtune(result, gen, "llama.cpp")
    assert_agrees(result, gen, tolerance=0.05)
    # A grammar of the task's answers keeps llama.cpp to them. It constrains text, not tokens: it
    # may spell an answer in sub-word tokens (" as" + "king") that guardtune's token trie never
    # offers, so its greedy path can end elsewhere; the agreement is printed, not required.
    constrained = [row["constrained"].strip() for row in result["rows"]]
    assert set(constrained) <= set(gen.classifier.labels)
    same = sum(a == b for a, b in zip(constrained, gen.method.generate_answers(messages), strict=True))
    print(f"llama.cpp grammar answer == guardtune's constrained answer on {same} of {len(messages)}")
    # Free greedy decoding: the answer or its start; how often depends on training (brief here).
    agreement = greedy_agreement(result, gen)
    print(f"llama.cpp free greedy answer == guardtune label on {agreement:.1%} of {len(messages)}")


# -- vLLM -----------------------------------------------------------------------------------------


def test_vllm_classifies_the_merged_label_tokens_export_like_guardtune(guard, messages: list[str]) -> None:
    need("vllm")
    lt = guard("label-tokens")
    request = {
        "model": str(lt.export("merged")),
        "messages": messages,
        "convert": "classify",
    }
    result = engines.run_driver("vllm", request)
    assert "error" not in result, result.get("traceback")
    assert_tokenizes_like_guardtune(result, lt, "vLLM")
    assert_agrees(result, lt, tolerance=0.02)


def test_vllm_on_the_merged_head_export(guard, messages: list[str]) -> None:
    need("vllm")
    head = guard("head")
    export = str(head.export("merged"))
    result = engines.run_driver("vllm", {"model": export, "messages": messages, "convert": "classify"})
    # vLLM maps Gemma3TextForSequenceClassification to its Gemma3ModelForSequenceClassification,
    # whose weights have no `model.` prefix, and refuses the export's `model.layers...` names
    # (docs/export.md says so).
    assert "error" in result, "vLLM loads the head export as it is now: update docs/export.md"
    assert "no module or parameter named 'model' in Gemma3ModelForSequenceClassification" in result["error"]
    print(f"vLLM {result['version']} on the head export: {result['root_error'][:400]}")
    # Named as the causal LM, vLLM's classify conversion loads the trained head as its `score`
    # layer and pools the last token, as guardtune does.
    overridden = engines.run_driver(
        "vllm",
        {
            "model": export,
            "messages": messages,
            "convert": "classify",
            "hf_overrides": {"architectures": ["Gemma3ForCausalLM"]},
        },
    )
    assert "error" not in overridden, overridden.get("traceback")
    assert_agrees(overridden, head, tolerance=0.02)


def test_vllm_runs_two_guards_as_lora_adapters_on_one_base(guard, messages: list[str]) -> None:
    need("vllm")
    from guardtune.backbone import resolve_base_dir

    gen, lt = guard("generate"), guard("label-tokens")
    guards = []
    for each, firsts in ((gen, [a.tokens[0] for a in gen.method.answers]), (lt, list(lt.method.label_ids))):
        prompt = each.method.prompt
        guards.append(
            {
                "name": each.name,
                # guardtune's model directory as it is: a PEFT adapter directory.
                "adapter": str(each.directory),
                # The rendered prompt as text, tokenized by vLLM's tokenizer of the base.
                "prompts": [prompt.text_before + m + prompt.text_after for m in messages],
                "label_token_ids": firsts,
            }
        )
    rank = max(json.loads((g.directory / "adapter_config.json").read_text())["r"] for g in (gen, lt))
    request = {"base": str(resolve_base_dir("gemma-3-270m")), "guards": guards, "max_lora_rank": rank}
    result = engines.run_driver("vllm", request, driver="vllm_lora")
    assert "error" not in result, result.get("traceback")
    print(f"vLLM {result['version']}: {len(guards)} LoRA guards on one base, one engine")
    for each, served in zip((gen, lt), result["guards"], strict=True):
        assert served["name"] == each.name
        served = {**served, "engine": f"vLLM LoRA {each.name}", "version": result["version"]}
        assert_tokenizes_like_guardtune(served, each, f"vLLM LoRA {each.name}")
        # The greedy token among the label tokens is guardtune's label; its scores are the
        # softmax over the label tokens' logits, as guardtune's.
        assert_agrees(served, each, tolerance=0.02)
        firsts = request["guards"][[g["name"] for g in guards].index(each.name)]["label_token_ids"]
        chosen = [each.classifier.labels[firsts.index(row["token"])] for row in served["rows"]]
        assert chosen == each.labels
        same = greedy_agreement(served, each)
        print(f"vLLM LoRA {each.name}: free greedy answer starts with guardtune's label on {same:.1%}")


def test_vllm_serve_classifies_the_merged_label_tokens_export_over_http(guard, messages: list[str]) -> None:
    need("vllm")
    lt = guard("label-tokens")
    request = {
        "model": str(lt.export("merged")),
        "messages": messages,
        "args": ["--runner", "pooling", "--convert", "classify"],
    }
    result = engines.run_driver("vllm", request, driver="vllm_serve")
    assert "error" not in result, f"{result['error']}\n{result['log_tail']}"
    print(f"vllm serve {' '.join(result['command'][1:2])}: up in {result['start_seconds']:.0f} s")
    # The server counts the prompt tokens it classified: guardtune's, prompt for prompt.
    assert [row["prompt_tokens"] for row in result["rows"]] == [len(ids) for ids in lt.token_ids]
    assert_agrees(result, lt, tolerance=0.02)
    assert result["exit_code"] is not None  # the server was shut down
