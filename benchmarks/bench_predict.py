"""Prediction speed and accuracy: the seeds' way, the common way and guardtune, in one run.

On the same base model, the same messages and the same trained adapters, this measures:

(a) the seeds' way: ``AutoModelForCausalLM`` + the method's LoRA adapter (PEFT), greedy
    ``generate()`` of up to 8 new tokens, one prompt at a time, full LM head, fp32; the label is
    parsed from the generated text. Run with the adapter of each method that reads a prompt
    (``reads_prompt`` in the registry: ``label-tokens``, ``generate``), so guardtune's fast path
    can be checked against it.
(b) the common way: ``AutoModelForSequenceClassification`` + a PEFT LoRA adapter (same r, alpha
    and target modules), batched, fp32. Its classification head is untrained: only its speed
    means anything.
(c) guardtune: ``Classifier.predict_proba`` for each method, once per ``--dtypes`` entry (by
    default ``--dtype`` and ``int8``: the decoder's projections in int8, see
    :mod:`guardtune.precision`).

For each path: messages/s and the ratio to (a) and (b), p50 / p95 latency of single messages,
peak resident memory, the fraction of this machine's bf16 matmul throughput the path achieves
(peak measured in the same run), macro-F1 on the messages' gold labels, and for guardtune the
agreement of its predictions with (a) run on the same adapter and, for every dtype after the
first, with the first dtype's predictions on all messages.

    python benchmarks/bench_predict.py --train-steps 40 --n 1000 --slow-n 100 \\
        --json bench_predict.json --markdown bench_predict.md
    python benchmarks/bench_predict.py --model runs/pii-head --model runs/pii-lt   # trained dirs

Each path runs in a fresh subprocess (unless ``--no-isolate``), so its peak RSS is its own.
``--allocators default jemalloc`` runs each (c) row once per memory allocator, preloaded into its
worker process (Linux): glibc's malloc keeps a fragmented heap after loading, which jemalloc or
tcmalloc may not (docs/int8.md, "Memory").
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

SEEDS, SEQCLS, GUARDTUNE = "seeds", "seqcls", "guardtune"
RESULT_KEYS = (
    "path",
    "kind",
    "method",
    "adapter",
    "dtype",
    "batch_size",
    "max_batch_tokens",
    "allocator",
    "n",
    "seconds",
    "messages_per_s",
    "ratio_to_seeds",
    "ratio_to_seqcls",
    "latency_n",
    "p50_ms",
    "p95_ms",
    "peak_rss_mb",
    "imports_rss_mb",
    "rss_scope",
    "tokens",
    "flops_per_token",
    "achieved_tflops",
    "fraction_of_float_peak",
    "macro_f1",
    "agreement_with_seeds",
    "agreement_with_reference",
    "speed_to_reference",
    "note",
)


# -- shared helpers -----------------------------------------------------------------------------


def proc_status_mb(key: str, pid: int | str = "self") -> float | None:
    """A memory figure of a process from Linux ``/proc/PID/status`` (``VmHWM``, ``VmRSS``) in MB,
    or None without /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{key}:")), None)
    return None if kb is None else kb / 1024


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """A process's peak resident set size so far (Linux ``VmHWM``) in MB, or None without /proc."""
    return proc_status_mb("VmHWM", pid)


def peak_rss_mb() -> float:
    """Peak resident set size of this process's memory so far, in MB.

    Linux's ``VmHWM`` starts afresh when a process execs; ``ru_maxrss`` (the fallback) would carry
    the parent's peak into a fresh worker process.
    """
    hwm = vm_hwm_mb()
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Allocators --allocators knows by name: the library names ``ctypes.util.find_library`` looks up,
# and the Debian / Ubuntu package that installs them.
ALLOCATORS = {
    "jemalloc": (("jemalloc",), "libjemalloc2"),
    "tcmalloc": (("tcmalloc_minimal", "tcmalloc"), "libtcmalloc-minimal4"),
}
DEFAULT_ALLOCATOR = "default"


def allocator_library(name: str) -> str | None:
    """The shared library to preload for allocator ``name``: a name in :data:`ALLOCATORS` or a
    library's path; None for ``default`` (the process's own malloc, glibc's on most Linux)."""
    if name == DEFAULT_ALLOCATOR:
        return None
    if not sys.platform.startswith("linux"):
        raise SystemExit(f"--allocators {name}: preloading an allocator needs Linux (LD_PRELOAD)")
    if name in ALLOCATORS:
        libraries, package = ALLOCATORS[name]
        for library in libraries:
            found = ctypes.util.find_library(library)
            if found:
                return found
        raise SystemExit(
            f"--allocators {name}: no lib{libraries[0]} on this machine "
            f"(Debian / Ubuntu: apt install {package}); or give the library's path"
        )
    path = Path(name)
    if not path.is_file():
        raise SystemExit(
            f"--allocators {name}: expected {DEFAULT_ALLOCATOR}, {', '.join(ALLOCATORS)} or a malloc "
            "library's path"
        )
    # The loader splits LD_PRELOAD at spaces and colons, and skips what is not a shared object
    # (e.g. libc.so, a linker script), which would leave the row measuring the default malloc.
    resolved = str(path.resolve())
    if any(c in resolved for c in " :"):
        raise SystemExit(f"--allocators {name}: expected a path without spaces or colons (LD_PRELOAD)")
    with path.open("rb") as library_file:
        if library_file.read(4) != b"\x7fELF":
            raise SystemExit(f"--allocators {name}: expected a shared library (ELF)")
    return resolved


def allocator_label(name: str) -> str:
    """How a row names its allocator: the name given, or a path's file name."""
    return name if name == DEFAULT_ALLOCATOR or name in ALLOCATORS else Path(name).name


def mapped_library(library: str) -> str | None:
    """The path this process maps ``library`` from (a path, or a file name as ``find_library``
    gives it, which may be a symlink to a longer versioned name), or None."""
    import psutil

    wanted = Path(library)
    for region in psutil.Process().memory_maps():
        path = Path(region.path)
        if wanted.is_absolute():
            if path == wanted:
                return region.path
        elif path.name == wanted.name or path.name.startswith(wanted.name + "."):
            return region.path
    return None


def current_rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def percentile_ms(seconds: list[float], q: float) -> float | None:
    return float(np.percentile(np.array(seconds) * 1000, q)) if seconds else None


def agreement(predicted: list[Any], reference: list[Any]) -> float:
    """Share of messages where two paths pick the same label."""
    return float(np.mean([a == b for a, b in zip(predicted, reference, strict=True)]))


def macro_f1(labels: list[str], gold: list[str], predicted: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0))


def parse_label(text: str, labels: list[str]) -> str | None:
    """The label a generated answer names: the label the text starts with, else the label sharing
    the longest prefix with it (a label-tokens adapter is trained on the first token only), else
    ``None``."""
    answer = text.strip().strip("\"'").lower()
    for label in labels:
        if answer.startswith(label.lower()):
            return label
    best, best_len = None, 0
    for label in labels:
        common = next(
            (i for i, (x, y) in enumerate(zip(answer, label.lower(), strict=False)) if x != y),
            min(len(answer), len(label)),
        )
        if common > best_len:
            best, best_len = label, common
    return best


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(non-embedding parameters including LoRA, LM-head parameters) of a (PEFT-wrapped) LM."""
    body = 0
    for module in model.modules():
        if type(module).__name__ == "Int8Linear":  # packed int8 weights: no parameters to list
            body += int(getattr(module, "in_features", 0)) * int(getattr(module, "out_features", 0))
    for name, param in model.named_parameters():
        if "embed_tokens" in name or "lm_head" in name or name.endswith(".score.weight"):
            continue
        body += param.numel()
    head_module: Any = None
    for module in model.modules():
        getter = getattr(module, "get_output_embeddings", None)
        if callable(getter):
            head_module = getter()
            if head_module is not None:
                break
    head = int(head_module.weight.numel()) if head_module is not None else 0
    return body, head


def matmul_peak(size: int, dtype: torch.dtype, seconds: float = 1.5) -> float:
    """FLOP/s of repeated ``size x size`` matmuls in ``dtype`` (the machine's practical peak)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)  # warm-up
    runs, started = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and runs >= 3:
            return 2 * size**3 * runs / elapsed


def base_source(base: str) -> str:
    from guardtune.backbone import resolve_base_dir

    return str(resolve_base_dir(base))


# -- the three kinds of path (each runs in its own process unless --no-isolate) ----------------------


def run_seeds(spec: dict[str, Any], texts: list[str], labels: list[str]) -> dict[str, Any]:
    """(a) AutoModelForCausalLM + PEFT adapter, greedy generate(), one prompt at a time, fp32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from guardtune.methods.prompting import PromptEncoder
    from guardtune.modeldir import read_manifest

    manifest = read_manifest(spec["model"])
    source = base_source(spec["base"])
    tokenizer = _tokenizer(source)
    model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, spec["model"]).eval()
    prompt = PromptEncoder.for_task(manifest.task, tokenizer, manifest.max_length)
    config = model.generation_config
    config.update(do_sample=False, max_new_tokens=8, top_k=None, top_p=None, temperature=None)
    config.pad_token_id = tokenizer.pad_token_id
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    config.eos_token_id = sorted({t for t in [*eos, tokenizer.eos_token_id] if t is not None})
    body, head = parameter_counts(model)

    def classify(text: str) -> tuple[str | None, int, int]:
        ids = torch.tensor([prompt.encode([text])[0]])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        new = out[0, ids.shape[1] :]
        answer = tokenizer.decode(new, skip_special_tokens=True)
        return parse_label(answer, manifest.task.label_names), ids.shape[1], len(new)

    classify(texts[0])  # warm-up
    predicted, latencies, flops, tokens = [], [], 0, 0
    started = time.perf_counter()
    for text in texts:
        began = time.perf_counter()
        label, prompt_tokens, new_tokens = classify(text)
        latencies.append(time.perf_counter() - began)
        predicted.append(label)
        # prefill + (new - 1) decoding steps run the body; every new token needs one LM-head row set
        tokens += prompt_tokens + max(new_tokens - 1, 0)
        flops += 2 * (body * (prompt_tokens + max(new_tokens - 1, 0)) + head * new_tokens)
    seconds = time.perf_counter() - started
    unparsed = sum(p is None for p in predicted)
    names = manifest.task.label_names
    return {
        "predicted": predicted,
        "seconds": seconds,
        "latencies": latencies,
        "tokens": tokens,
        "flops": flops,
        "flops_per_token": 2 * body,
        "macro_f1": macro_f1(names, labels, [p or "" for p in predicted]),
        "note": f"LM head {head:,} params per generated token; {unparsed} answer(s) unparsed",
    }


def run_seqcls(spec: dict[str, Any], texts: list[str], labels: list[str]) -> dict[str, Any]:
    """(b) AutoModelForSequenceClassification + PEFT LoRA, batched, fp32 (untrained head)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    source = base_source(spec["base"])
    tokenizer = _tokenizer(source)
    model: Any = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(spec["labels"]), dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    lora = spec["lora"]
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
    )
    model = get_peft_model(model, config).eval()
    body, _ = parameter_counts(model)
    batch_size = spec["batch_size"]

    def classify(batch: list[str]) -> list[int]:
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**encoded).logits
        return [int(i) for i in logits.argmax(dim=-1)]

    classify(texts[:batch_size])  # warm-up
    predicted: list[int] = []
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        predicted += classify(texts[start : start + batch_size])
    seconds = time.perf_counter() - started
    latencies = []
    for text in texts[: spec["latency_n"]]:
        began = time.perf_counter()
        classify([text])
        latencies.append(time.perf_counter() - began)
    tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    names = spec["labels"]
    return {
        "predicted": [names[i] for i in predicted],
        "seconds": seconds,
        "latencies": latencies,
        "tokens": tokens,
        "flops": 2 * body * tokens,
        "flops_per_token": 2 * body,
        "macro_f1": None,
        "note": "untrained classification head (random init): speed only, no accuracy",
    }


def run_guardtune(spec: dict[str, Any], texts: list[str], labels: list[str]) -> dict[str, Any]:
    """(c) guardtune: Classifier.predict_proba (length-bucketed batches, prefix reuse, no LM head)."""
    from guardtune.classifier import Classifier
    from guardtune.infer import reused_prefix
    from guardtune.precision import ACTIVATION_ENV, FLOAT_ENV, int8_kernel
    from guardtune.recheck import DEFAULT_RECHECK_MARGIN

    name, *suffixes = spec["dtype"].split("+")
    if not set(suffixes) <= {"compile", "recheck"} or len(set(suffixes)) < len(suffixes):
        raise SystemExit(
            f"--dtypes {spec['dtype']}: expected DTYPE[:PARTS][@ACTIVATIONS][+recheck][+compile]"
        )
    compiled = "compile" in suffixes
    recheck = DEFAULT_RECHECK_MARGIN if "recheck" in suffixes else None
    name, _, activations = name.partition("@")
    dtype, _, keep_float = name.partition(":")
    # Read once, when the projections are quantised.
    row_env = {FLOAT_ENV: keep_float, ACTIVATION_ENV: activations}
    with mock.patch.dict(os.environ, {key: value for key, value in row_env.items() if value}):
        classifier = Classifier.load(spec["model"], dtype=dtype, compiled=compiled, int8_recheck=recheck)
    load_rss = current_rss_mb()
    method = classifier.method
    body, _ = parameter_counts(method.backbone.peft_model)
    batch_size = spec["batch_size"]
    budget = spec["max_batch_tokens"]  # 0: no limit
    warm_up = time.perf_counter()
    # Warm-up (the prefix cache too).
    classifier.predict_proba(texts[:batch_size], batch_size=batch_size, max_batch_tokens=budget)
    if compiled:  # a single message compiles a graph of its own
        classifier.predict_proba(texts[0])
    warm_up_seconds = time.perf_counter() - warm_up
    rechecked = classifier.rechecked
    started = time.perf_counter()
    scores = classifier.predict_proba(texts, batch_size=batch_size, calibrated=False, max_batch_tokens=budget)
    seconds = time.perf_counter() - started
    rechecked = classifier.rechecked - rechecked
    latencies = []
    for text in texts[: spec["latency_n"]]:
        began = time.perf_counter()
        classifier.predict_proba(text, calibrated=False)
        latencies.append(time.perf_counter() - began)
    encoded = method.encode(texts)
    reused = reused_prefix(method, encoded)
    tokens = sum(len(ids) - reused for ids in encoded)
    names = classifier.labels
    predicted = [names[i] for i in scores.argmax(axis=1)]
    return {
        "predicted": predicted,
        "seconds": seconds,
        "latencies": latencies,
        "tokens": tokens,
        "flops": 2 * body * tokens,
        "flops_per_token": 2 * body,
        "macro_f1": macro_f1(names, labels, predicted),
        "note": f"projections {classifier.precision}"
        + (f" ({int8_kernel()} kernel)" if classifier.precision == "int8" else "")
        + f", rest {method.backbone.dtype}; "
        f"RSS {load_rss:.0f} MB once loaded"
        + (f"; decoder compiled, {warm_up_seconds:.0f} s of warm-up" if compiled else "")
        + (
            f"; {rechecked} of {len(texts)} re-scored in float (margin {classifier.recheck.margin})"
            if classifier.recheck is not None
            else ""
        )
        + (f"; prompt prefix of {reused} tokens reused" if reused else ""),
    }


def _tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


RUNNERS = {SEEDS: run_seeds, SEQCLS: run_seqcls, GUARDTUNE: run_guardtune}


def quiet() -> None:
    """No per-load progress bars or missing-weight reports (the untrained (b) head is expected)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


# What each kind of path imports before its baseline RSS reading: only what it runs, so a (c) row's
# peak is a predict process's (guardtune.api would add the trainer, metrics and plotting code).
WORKER_IMPORTS = {
    SEEDS: ("peft", "transformers", "guardtune.methods.prompting", "guardtune.modeldir"),
    SEQCLS: ("peft", "transformers", "guardtune.backbone"),
    GUARDTUNE: ("guardtune.classifier",),
}


def run_worker(spec_path: Path) -> None:
    """One path, in this process: read the spec and the messages, write the result."""
    import importlib

    spec = json.loads(spec_path.read_text())
    library = spec.get("allocator_library")
    mapped = mapped_library(library) if library else None
    if library and mapped is None:
        # The loader only warns when it cannot preload; the row would measure the default malloc.
        raise SystemExit(f"--allocators: {library} was preloaded but is not loaded in the worker")
    quiet()
    for module in WORKER_IMPORTS[spec["kind"]]:
        importlib.import_module(module)
    imports_rss = current_rss_mb()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
        # guardtune sets its own thread count as it loads a base; this keeps it at --threads.
        os.environ.setdefault("GUARDTUNE_THREADS", str(spec["threads"]))
    data = json.loads(Path(spec["data"]).read_text())
    texts, labels = data["texts"][: spec["n"]], data["labels"][: spec["n"]]
    result = RUNNERS[spec["kind"]](spec, texts, labels)
    result["peak_rss_mb"] = peak_rss_mb()
    result["imports_rss_mb"] = imports_rss
    if mapped:
        result["note"] += f"; malloc from {mapped}"
    Path(spec["out"]).write_text(json.dumps(result))


def run_path(spec: dict[str, Any], work: Path, isolate: bool) -> dict[str, Any]:
    index = len(list(work.glob("spec-*.json")))
    spec_path = work / f"spec-{index}.json"
    spec["out"] = str(work / f"result-{index}.json")
    spec_path.write_text(json.dumps(spec))
    label = " ".join(str(part) for part in (spec["kind"], spec.get("method"), spec.get("variant")) if part)
    print(f"measuring {label} on {spec['n']} messages...", file=sys.stderr, flush=True)
    if isolate:
        env = dict(os.environ)
        if spec.get("allocator_library"):
            env["LD_PRELOAD"] = " ".join(filter(None, [spec["allocator_library"], env.get("LD_PRELOAD")]))
        completed = subprocess.run(
            [sys.executable, __file__, "--worker", str(spec_path)], check=False, env=env
        )
        if completed.returncode != 0:
            raise SystemExit(f"{label}: worker failed with exit code {completed.returncode}")
    else:
        run_worker(spec_path)
    result: dict[str, Any] = json.loads(Path(spec["out"]).read_text())
    return result


# -- models to measure ------------------------------------------------------------------------------


def train_models(args: argparse.Namespace, work: Path) -> list[Path]:
    """A short model per method, trained with guardtune.api.train on one shared backbone."""
    from guardtune.api import train
    from guardtune.backbone import load_backbone
    from guardtune.data.synth import sample
    from guardtune.train import TrainSettings

    data = work / "train.csv"
    sample("pii-intent", args.train_rows, args.seed).to_csv(data, index=False)
    backbone = load_backbone(args.base, dtype=args.dtype)
    models = []
    for method in args.methods:
        print(f"training {method} for {args.train_steps} steps...", file=sys.stderr, flush=True)
        settings = TrainSettings(
            max_steps=args.train_steps,
            batch_size=args.train_batch_size,
            max_length=args.max_length,
            dtype=args.dtype,
            seed=args.seed,
        )
        out = work / f"model-{method}"
        train("pii-intent", data, out, base=args.base, method=method, settings=settings, backbone=backbone)
        models.append(out)
    del backbone
    return models


def read_check_file(path: Path, task: Any, n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` texts and gold labels of a labelled file (CSV, TSV, JSONL, Parquet) of the
    models' task, e.g. the quickstart's ``data/check.csv``."""
    from guardtune.data.readers import load_examples

    if task.mode != "single":
        raise SystemExit(f"--data {path}: task {task.name} is multi-label (expected single-label)")
    examples = load_examples(path, task)
    texts = examples.texts[:n]
    gold = [str(label) for label in (examples.labels or [])[:n]]
    if not texts:
        raise SystemExit(f"--data {path}: no rows (expected labelled messages)")
    return texts, gold


def machine() -> dict[str, Any]:
    from guardtune.backbone import describe_machine

    return describe_machine()


# -- the report -----------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def markdown(result: dict[str, Any]) -> str:
    config, peak = result["config"], result["peak_matmul"]
    reference = config["reference"]
    lines = [
        f"Base `{config['base']}`, {config['n']} messages from {config['data']} "
        f"(mean {config['mean_message_tokens']:.1f} tokens), {result['machine']['cpu']}, "
        f"{result['machine']['cores']} cores, torch {result['machine']['torch']} "
        f"({result['machine']['torch_threads']} threads). Peak matmul {config['matmul_size']}^2: "
        f"bf16 {peak['bf16_tflops']:.2f} TFLOP/s, fp32 {peak['fp32_tflops']:.2f} TFLOP/s.",
        "",
        "| path | method | dtype | msgs | msg/s | x (a) | x (b) | p50 ms | p95 ms | peak RSS MB "
        f"| % {peak['float']} peak | macro-F1 | agrees with (a) | agrees with {reference} | x {reference} |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["paths"]:
        lines.append(
            "| "
            + " | ".join(
                [
                    row["path"],
                    row["method"] or "-",
                    row["dtype"],
                    str(row["n"]),
                    fmt(row["messages_per_s"], 2),
                    fmt(row["ratio_to_seeds"], 1),
                    fmt(row["ratio_to_seqcls"], 2),
                    fmt(row["p50_ms"], 0),
                    fmt(row["p95_ms"], 0),
                    fmt(row["peak_rss_mb"], 0),
                    fmt(
                        None if row["fraction_of_float_peak"] is None else 100 * row["fraction_of_float_peak"]
                    ),
                    fmt(row["macro_f1"], 3),
                    fmt(row["agreement_with_seeds"], 3),
                    fmt(row["agreement_with_reference"], 4),
                    fmt(row["speed_to_reference"], 2),
                ]
            )
            + " |"
        )
    lines += ["", *(f"- {note}" for note in result["notes"])]
    return "\n".join(lines) + "\n"


def variant_label(variant: tuple[str, int, str], budgets: list[int], allocators: list[str]) -> str:
    """A (c) row's dtype column: the dtype, and its token budget and allocator where several of
    them are compared."""
    dtype, budget, allocator = variant
    parts = [dtype]
    if len(budgets) > 1:
        parts.append(f"{budget or 'any'} tokens")
    if len(allocators) > 1:
        parts.append(allocator_label(allocator))
    return ", ".join(parts)


def build_row(
    path: str, spec: dict[str, Any], raw: dict[str, Any], peak_float: float, isolate: bool
) -> dict[str, Any]:
    seconds = raw["seconds"]
    achieved = raw["flops"] / seconds if seconds > 0 else None
    return {
        "path": path,
        "kind": spec["kind"],
        "method": spec.get("method"),
        "adapter": spec.get("model"),
        "dtype": spec.get("dtype", "fp32"),
        "batch_size": spec.get("batch_size", 1),
        "max_batch_tokens": spec.get("max_batch_tokens"),
        "allocator": allocator_label(spec.get("allocator", DEFAULT_ALLOCATOR)),
        "n": spec["n"],
        "seconds": seconds,
        "messages_per_s": spec["n"] / seconds if seconds > 0 else None,
        "ratio_to_seeds": None,
        "ratio_to_seqcls": None,
        "latency_n": len(raw["latencies"]),
        "p50_ms": percentile_ms(raw["latencies"], 50),
        "p95_ms": percentile_ms(raw["latencies"], 95),
        "peak_rss_mb": raw["peak_rss_mb"],
        "imports_rss_mb": raw["imports_rss_mb"],
        "rss_scope": "this path alone (fresh process)" if isolate else "whole benchmark process so far",
        "tokens": raw["tokens"],
        "flops_per_token": raw["flops_per_token"],
        "achieved_tflops": achieved / 1e12 if achieved is not None else None,
        "fraction_of_float_peak": achieved / peak_float if achieved is not None else None,
        "macro_f1": raw["macro_f1"],
        "agreement_with_seeds": None,
        "agreement_with_reference": None,
        "speed_to_reference": None,
        "note": raw["note"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from guardtune.batches import DEFAULT_MAX_BATCH_TOKENS, token_budget_problem
    from guardtune.methods import available_methods

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--base", default="gemma-3-270m", help="HF dir, .gguf or gemma-3-270m")
    parser.add_argument("--model", type=Path, action="append", default=[], help="trained model dir")
    parser.add_argument("--train-steps", type=int, default=40, help="without --model: steps per method")
    parser.add_argument("--train-rows", type=int, default=1200, help="without --model: training rows")
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--methods", nargs="+", default=available_methods(), choices=available_methods())
    parser.add_argument(
        "--data",
        type=Path,
        help="labelled messages to measure on, e.g. a model's check split (default: --n synthetic "
        "pii-intent check-split messages)",
    )
    parser.add_argument("--n", type=int, default=1000, help="messages per path (at most)")
    parser.add_argument("--slow-n", type=int, help="messages for (a), one at a time (default: --n)")
    parser.add_argument("--latency-n", type=int, default=50, help="single-message calls for p50/p95")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of (b) and (c)")
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        nargs="+",
        default=[DEFAULT_MAX_BATCH_TOKENS],
        help="(c): most padded tokens per forward pass, 0 for no limit; several values give a (c) "
        f"row per dtype and value (default: guardtune's, {DEFAULT_MAX_BATCH_TOKENS})",
    )
    parser.add_argument(
        "--allocators",
        nargs="+",
        default=[DEFAULT_ALLOCATOR],
        help="(c): the memory allocator each worker runs with, preloaded (Linux): default (the "
        f"process's own), {', '.join(ALLOCATORS)} or a malloc library's path; several values give "
        "a (c) row per dtype and allocator",
    )
    parser.add_argument("--dtype", default="auto", help="training dtype: auto, bf16 or fp32")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        help="guardtune's dtypes, a (c) row each per method; later ones are compared with the first "
        "(default: --dtype and int8). int8:PARTS sets GUARDTUNE_INT8_FLOAT=PARTS for that row "
        "(what stays float, e.g. int8:none, int8:down_proj,first), int8@MODE sets "
        "GUARDTUNE_INT8_ACTIVATIONS=MODE (token, tensor, weights); a +compile suffix compiles the "
        "decoder (e.g. int8+compile, int8@weights+compile; head models); +recheck scores again in "
        "float the messages int8 could flip (--int8-recheck at guardtune.recheck.DEFAULT_RECHECK_MARGIN)",
    )
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-isolate", action="store_true", help="run every path in this process")
    parser.add_argument(
        "--guardtune-only", action="store_true", help="skip (a) and (b): only guardtune's rows per dtype"
    )
    parser.add_argument("--work", type=Path, help="working directory (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    from guardtune.backbone import float_name, resolve_dtype
    from guardtune.data.synth import sample
    from guardtune.methods import get_method
    from guardtune.modeldir import read_manifest

    isolate = not args.no_isolate
    # Bad options stop here, before any training or measuring.
    budgets = list(dict.fromkeys(args.max_batch_tokens))
    for budget in budgets:
        if (problem := token_budget_problem(budget)) is not None:
            raise SystemExit(problem)
    budget_list = ", ".join(str(budget or "any") for budget in budgets)
    allocators = list(dict.fromkeys(args.allocators))
    libraries = {allocator: allocator_library(allocator) for allocator in allocators}
    labels = [allocator_label(allocator) for allocator in allocators]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"--allocators: two allocators would share a row label ({', '.join(labels)})")
    # An LD_PRELOAD this script inherits is in every worker, the default rows' too.
    inherited_preload = os.environ.get("LD_PRELOAD") or None
    if args.no_isolate and any(libraries.values()):
        raise SystemExit(
            "--allocators: a preloaded allocator needs each path in its own process (drop --no-isolate)"
        )
    work = args.work or Path(tempfile.mkdtemp(prefix="guardtune-bench-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    models = list(args.model) or train_models(args, work)
    manifests = {path: read_manifest(path) for path in models}
    bases = {m.base for m in manifests.values()}
    if args.model and len(bases) > 1:
        raise SystemExit(f"--model: the models have different bases ({', '.join(sorted(bases))})")
    base = next(iter(bases)) if args.model else args.base
    task = next(iter(manifests.values())).task
    dtypes = list(dict.fromkeys(args.dtypes or [args.dtype, "int8"]))
    # One (c) row per dtype, token budget and allocator; the first is every later one's reference.
    variants = [(d, b, a) for d in dtypes for b in budgets for a in allocators]
    reference = variant_label(variants[0], budgets, allocators)

    if args.data:
        texts, gold = read_check_file(args.data, task, args.n)
    else:
        frame = sample("pii-intent", args.n, args.seed + 1000, split="check")
        texts, gold = [str(t) for t in frame["text"]], [str(x) for x in frame["label"]]
    n = len(texts)
    slow_n = min(args.slow_n or n, n)
    data = work / "messages.json"
    data.write_text(json.dumps({"texts": texts, "labels": gold}))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_source(base))
    mean_tokens = float(np.mean([len(ids) for ids in tokenizer(texts)["input_ids"]]))

    peak_bf16 = matmul_peak(args.matmul_size, torch.bfloat16)
    peak_fp32 = matmul_peak(args.matmul_size, torch.float32)
    # The float precision --dtype auto runs here: bf16's peak means nothing where it is emulated.
    float_peak_name = float_name(resolve_dtype("auto", torch.device("cpu")))
    peak_float = peak_bf16 if float_peak_name == "bf16" else peak_fp32

    common = {"base": base, "data": str(data), "threads": args.threads, "latency_n": args.latency_n}
    rows: list[dict[str, Any]] = []
    predictions: dict[tuple[str, str], list[Any]] = {}
    by_method = {manifests[path].method: path for path in models}
    prompt_methods = [m for m in available_methods() if get_method(m).reads_prompt]
    seed_methods = [m for m in prompt_methods if m in by_method] or [next(iter(by_method))]
    if args.guardtune_only:
        seed_methods = []
    for method in seed_methods:
        spec = {**common, "kind": SEEDS, "method": method, "model": str(by_method[method]), "n": slow_n}
        spec["dtype"] = "fp32"
        raw = run_path(spec, work, isolate)
        rows.append(
            build_row("(a) seeds: generate 8 tokens, 1 at a time, fp32", spec, raw, peak_float, isolate)
        )
        predictions[(SEEDS, method)] = raw["predicted"]
    if not args.guardtune_only:
        lora = next(iter(manifests.values())).lora
        spec = {**common, "kind": SEQCLS, "n": n, "batch_size": args.batch_size, "dtype": "fp32"}
        spec.update(lora=lora, labels=task.label_names, method=None)
        raw = run_path(spec, work, isolate)
        rows.append(build_row("(b) common: SeqCls + LoRA, batched, fp32", spec, raw, peak_float, isolate))
    for method, path in by_method.items():
        for variant in variants:
            dtype, budget, allocator = variant
            spec = {**common, "kind": GUARDTUNE, "method": method, "model": str(path), "n": n}
            spec.update(batch_size=args.batch_size, dtype=dtype, max_batch_tokens=budget)
            spec.update(allocator=allocator, allocator_library=libraries[allocator])
            spec["variant"] = variant_label(variant, budgets, allocators)
            raw = run_path(spec, work, isolate)
            row = build_row("(c) guardtune predict_proba", spec, raw, peak_float, isolate)
            row["dtype"] = spec["variant"]
            seeds = predictions.get((SEEDS, method))
            if seeds is not None:
                row["agreement_with_seeds"] = agreement(raw["predicted"][: len(seeds)], seeds)
            first_predicted = predictions.setdefault((GUARDTUNE, method), raw["predicted"])
            if variant != variants[0]:
                row["agreement_with_reference"] = agreement(raw["predicted"], first_predicted)
                first = next(r for r in rows if r["kind"] == GUARDTUNE and r["method"] == method)
                if row["messages_per_s"] and first["messages_per_s"]:
                    row["speed_to_reference"] = row["messages_per_s"] / first["messages_per_s"]
            rows.append(row)

    seeds_speed = next((r["messages_per_s"] for r in rows if r["kind"] == SEEDS), None)
    seqcls_speed = next((r["messages_per_s"] for r in rows if r["kind"] == SEQCLS), None)
    for row in rows:
        speed = row["messages_per_s"]
        row["ratio_to_seeds"] = speed / seeds_speed if speed and seeds_speed else None
        row["ratio_to_seqcls"] = speed / seqcls_speed if speed and seqcls_speed else None
    baselines = [
        f"(a) ran on the first {slow_n} of the {n} messages, with the adapter of "
        f"{', '.join(seed_methods)}; x (a) is against the first (a) row "
        f"({rows[0]['method']}). Greedy, up to 8 new tokens, label parsed from the text.",
        "(b) has a randomly initialised, untrained classification head: its speed is meaningful, "
        "its predictions are not (macro-F1 n/a).",
    ]
    notes = [
        *(["--guardtune-only: (a) and (b) not run."] if args.guardtune_only else baselines),
        "macro-F1 uses the most likely label (no policy thresholds) against the gold labels of "
        + (
            f"{args.data}"
            if args.data
            else "the synthetic check split (templates the training generator never uses)"
        )
        + "; 'agrees with (a)' is "
        "the share of (a)'s messages where guardtune's fast path picks the label (a) parsed from "
        "the same adapter's generated text.",
        f"(c) runs once per dtype ({', '.join(dtypes)})"
        + (f", token budget ({budget_list})" if len(budgets) > 1 else "")
        + (
            f", allocator ({', '.join(labels)}, preloaded into the worker; default: the process's own malloc)"
            if len(allocators) > 1
            else ""
        )
        + (f" (every worker inherits LD_PRELOAD={inherited_preload})" if inherited_preload else "")
        + f"; 'agrees with {reference}' is the share of all {n} messages where a later row picks the "
        f"label the {reference} row picked, and 'x {reference}' its messages/s over that row's "
        "(same run). "
        f"Token budget: at most {budget_list} padded tokens per "
        "forward pass, as well as --batch-size messages. "
        "int8: the decoder's projections as int8 (activations int8 per token; the kernel in the "
        "row's note: oneDNN's packed int8 linear on CPUs with VNNI / AMX, fbgemm's on AVX2 alone), "
        "the rest as auto; int8@weights: int8 weights, float activations.",
        f"p50/p95: {args.latency_n} single-message calls per path ((a) is single-message already: "
        "all its calls count).",
        "peak RSS: "
        + (
            "each path in a fresh process (Linux VmHWM), so the figure is that path alone: Python, "
            "torch, transformers, peft and guardtune imported, the model, the messages."
            if isolate
            else "every path ran in one process: the figure is the process's peak so far, not the path's own."
        )
        + " `imports_rss_mb` in the JSON is the worker's RSS after the imports, before any model.",
        f"% {float_peak_name} peak: useful FLOPs / wall time / measured {float_peak_name} matmul peak "
        "(bf16 where the CPU has native bf16, else fp32); useful FLOPs = 2 x "
        "(non-embedding + LoRA parameters) per token the path computes (non-pad tokens; guardtune "
        "skips the reused prompt prefix), plus the full LM head per generated token for (a); "
        "guardtune's label rows and linear head are not counted.",
    ]
    if seed_methods and not any(m in prompt_methods for m in by_method):
        notes.append(
            f"no prompt-based model given: (a) ran with the {seed_methods[0]} adapter, which is not "
            "trained to generate a label, so its macro-F1 means nothing (its speed does)."
        )
    result = {
        "config": {
            "work": str(work),
            "base": base,
            "n": n,
            "data": str(args.data) if args.data else "the synthetic pii-intent check split",
            "slow_n": slow_n,
            "latency_n": args.latency_n,
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "dtypes": dtypes,
            "max_batch_tokens": budgets,
            "allocators": dict(zip(labels, libraries.values(), strict=True)),
            "inherited_ld_preload": inherited_preload,
            "reference": reference,
            "methods": list(by_method),
            "models": {m: str(p) for m, p in by_method.items()},
            "isolated_processes": isolate,
            "matmul_size": args.matmul_size,
            "mean_message_tokens": mean_tokens,
        },
        "machine": machine(),
        "peak_matmul": {
            "bf16_tflops": peak_bf16 / 1e12,
            "fp32_tflops": peak_fp32 / 1e12,
            "float": float_peak_name,
        },
        "paths": rows,
        "notes": notes,
    }
    table = markdown(result)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    return result


if __name__ == "__main__":
    main()
