"""One guard, the same messages, three runtimes in one run: guardtune, vLLM and llama.cpp.

For a trained ``label-tokens`` guard (the method all three run: guardtune's model directory, its
merged export in vLLM's classify runner, its GGUF export in llama-cpp-python) this measures on the
same synthetic ``pii-intent`` messages:

- guardtune: ``Classifier.predict_proba`` (fp32, batched, the prompt's prefix cache reused);
- vLLM: ``LLM.classify`` on all messages in one call (offline, batched; fp32), the engine
  tokenizing each rendered chat template itself;
- llama.cpp: one message at a time (llama-cpp-python evaluates one sequence per call; f16 GGUF).

Per runtime: messages/s over all messages, the p50 latency of single messages (one message per
call, after the batched run), peak resident memory of its process, and how many labels equal
guardtune's. Each runtime runs in a process of its own (the engines in their ``.engines/``
environments, see ``make engines``), so its peak RSS is its own; load time is reported apart and
not counted in messages/s. An engine that is not set up is reported as such, not measured.

    python benchmarks/bench_engines.py --model runs/pii-lt --n 1000 \\
        --json bench_engines.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("guardtune", "vllm", "llama")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a trained label-tokens model directory")
    parser.add_argument("--n", type=int, default=1000, help="messages (synthetic pii-intent, seed 21)")
    parser.add_argument("--single", type=int, default=50, help="messages timed one per call for p50")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads each runtime may use")
    parser.add_argument("--batch-size", type=int, default=32, help="guardtune's predict batch size")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="which of guardtune,vllm,llama")
    parser.add_argument("--exports", type=Path, help="where the exports go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--worker", nargs=2, metavar=("REQUEST", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and args.model is None:
        parser.error("--model is required")
    return args


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def guardtune_worker(request_path: str, result_path: str) -> None:
    """guardtune's side, in a process of its own (its peak RSS is then guardtune's alone)."""
    import torch

    from guardtune.api import Classifier

    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    torch.set_num_threads(request["threads"])
    started = time.perf_counter()
    classifier = Classifier.load(request["model"], dtype="fp32")
    load_seconds = time.perf_counter() - started
    messages = request["messages"]
    batch_size = request["batch_size"]
    classifier.predict_proba(messages[:batch_size], batch_size=batch_size, calibrated=False)  # warm-up
    t0 = time.perf_counter()
    scores = classifier.predict_proba(messages, batch_size=batch_size, calibrated=False)
    seconds = time.perf_counter() - t0
    single = []
    for message in messages[: request["single"]]:
        t1 = time.perf_counter()
        classifier.predict_proba([message], calibrated=False)
        single.append(time.perf_counter() - t1)
    result = {
        "labels": [classifier.labels[i] for i in scores.argmax(axis=1)],
        "load_seconds": load_seconds,
        "seconds": seconds,
        "single_seconds": single,
        "peak_rss_mb": peak_rss_mb(),
        "version": _guardtune_version(),
    }
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")


def _guardtune_version() -> str:
    from importlib.metadata import version

    return version("guardtune")


def run_guardtune(args: argparse.Namespace, messages: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        body = {
            "model": str(args.model),
            "messages": messages,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "single": args.single,
        }
        request.write_text(json.dumps(body), encoding="utf-8")
        subprocess.run([sys.executable, __file__, "--worker", str(request), str(result)], check=True)
        return dict(json.loads(result.read_text(encoding="utf-8")))


def engines_module() -> Any:
    import importlib.util

    path = ROOT / "scripts" / "engine_drivers" / "run.py"
    spec = importlib.util.spec_from_file_location("_engine_drivers_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(model: Path, fmt: str, out: Path) -> Path:
    from guardtune.export import export_model

    if out.exists():
        return out
    return Path(export_model(model, fmt, out))


def run_vllm(
    args: argparse.Namespace, messages: list[str], labels: list[str], exports: Path
) -> dict[str, Any]:
    engines = engines_module()
    merged = export(args.model, "merged", exports / "merged")
    request = {
        "model": str(merged),
        "messages": messages,
        "convert": "classify",
        "single_messages": args.single,
    }
    result = engines.run_driver("vllm", request, timeout=7200)
    if "error" in result:
        raise RuntimeError(f"vLLM refused the merged export: {result['error']}")
    return {
        "labels": [labels[int(np.argmax(row["scores"]))] for row in result["rows"]],
        "load_seconds": result["load_seconds"],
        "seconds": result["batch_seconds"],
        "single_seconds": result["single_seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "version": result["version"],
    }


def run_llama(
    args: argparse.Namespace, messages: list[str], labels: list[str], exports: Path
) -> dict[str, Any]:
    from guardtune.api import Classifier

    engines = engines_module()
    gguf = export(args.model, "gguf", exports / "guard.gguf")
    # The label tokens, whose logits at the last prompt token are the scores.
    label_ids = Classifier.load(args.model, dtype="fp32").method.classifier_tokens
    assert label_ids is not None
    request = {
        "model": str(gguf),
        "messages": messages,
        "label_token_ids": label_ids,
        "generate": False,
        "threads": args.threads,
    }
    result = engines.run_driver("llama", request, timeout=7200)
    # One message per call is llama-cpp-python's way: its batch time is the sum of its messages'.
    latencies = result["score_seconds"]
    return {
        "labels": [labels[int(np.argmax(row["scores"]))] for row in result["rows"]],
        "load_seconds": result["load_seconds"],
        "seconds": float(sum(latencies)),
        "single_seconds": latencies[: args.single],
        "peak_rss_mb": result["peak_rss_mb"],
        "version": result["version"],
    }


def table(results: dict[str, dict[str, Any]], n: int) -> str:
    base = results.get("guardtune")
    lines = [
        "| runtime | version | messages/s | x guardtune | single p50 (ms) | peak RSS (MB) | load (s) "
        "| labels = guardtune |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        if "skipped" in row:
            lines.append(f"| {name} | {row['skipped']} | | | | | | |")
            continue
        ratio = (
            row["messages_per_s"] / base["messages_per_s"] if base and "skipped" not in base else float("nan")
        )
        lines.append(
            f"| {name} | {row['version']} | {row['messages_per_s']:.1f} | {ratio:.2f} | {row['p50_ms']:.1f} "
            f"| {row['peak_rss_mb']:.0f} | {row['load_seconds']:.1f} | {row['agreement']}/{n} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        guardtune_worker(*args.worker)
        return {}
    from guardtune.data.synth import generate
    from guardtune.modeldir import read_manifest

    manifest = read_manifest(args.model)
    if manifest.method != "label-tokens":
        raise SystemExit(f"{args.model}: a label-tokens guard is needed (found {manifest.method})")
    messages = [str(text) for text in generate("pii-intent", args.n, seed=21)["text"]]
    labels = manifest.task.label_names
    wanted = [name.strip() for name in args.runtimes.split(",") if name.strip()]
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the engines' processes inherit it
    raw: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-engines-exports-") as tmp:
        exports = args.exports or Path(tmp)
        exports.mkdir(parents=True, exist_ok=True)
        for name in wanted:
            if name != "guardtune":
                missing = engines_module().missing_engine(name)
                if missing is not None:
                    raw[name] = {"skipped": missing}
                    continue
            print(f"[bench_engines] {name} on {args.n} messages ...", flush=True)
            if name == "guardtune":
                raw[name] = run_guardtune(args, messages)
            elif name == "vllm":
                raw[name] = run_vllm(args, messages, labels, exports)
            else:
                raw[name] = run_llama(args, messages, labels, exports)
    reference = raw.get("guardtune", {}).get("labels")
    for row in raw.values():
        if "skipped" in row:
            continue
        row["messages_per_s"] = args.n / row["seconds"]
        row["p50_ms"] = float(np.median(row["single_seconds"]) * 1000)
        row["agreement"] = (
            sum(a == b for a, b in zip(row["labels"], reference, strict=True)) if reference else args.n
        )
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "n": args.n,
        "single": args.single,
        "threads": args.threads,
        "results": {name: {k: v for k, v in row.items() if k != "labels"} for name, row in raw.items()},
    }
    print(table(raw, args.n))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
