"""``--quantize 4bit`` and ``8bit`` against the unquantised base, on the quickstart's guard.

For each seed this writes the quickstart's data (``guardtune.quickstart.write_data``: 2,400
synthetic rows split 80/10/10 and 600 check rows from held-out templates), then for each mode
trains the quickstart's model (``head`` method, batch 16, the quickstart's steps for the task,
everything else at the training defaults) and loads it again to score the check set. Per mode:

- check-set macro-F1 (as ``guardtune quickstart`` reports it) and its difference to the first mode;
- training time (the training loop, and the whole ``train`` call with loading and validation);
- predict messages/s over the check set (``Classifier.load`` then one ``predict_proba`` pass);
- peak RSS of the training process and of the predicting process (each its own process).

    python benchmarks/bench_quantize.py --modes none 4bit 8bit --seeds 0 \\
        --json bench_quantize.json --markdown bench_quantize.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("none", "4bit", "8bit")
THREADS_ENV = "GUARDTUNE_THREADS"
RESULT_KEYS = (
    "mode",
    "seed",
    "steps",
    "train_seconds",
    "train_wall_seconds",
    "examples_per_s",
    "train_loss",
    "train_peak_rss_mb",
    "load_seconds",
    "messages_per_s",
    "predict_peak_rss_mb",
    "check_macro_f1",
    "check_n",
    "delta_macro_f1",
)


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux ``VmHWM``, which starts afresh at exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantize_arg(mode: str) -> str | None:
    return None if mode == "none" else mode


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one mode's model as the quickstart does; the loop's time and this process's peak RSS."""
    from dataclasses import replace

    from guardtune.api import train
    from guardtune.quickstart import quickstart_settings

    data = Path(spec["data"])
    settings = replace(
        quickstart_settings(spec["task"], spec["seed"], spec["steps"]), quantize=quantize_arg(spec["mode"])
    )
    started = time.perf_counter()
    report = train(
        spec["task"],
        data / "train.csv",
        spec["model"],
        val_path=data / "val.csv",
        base=spec["base"],
        settings=settings,
        overwrite=True,
    )
    return {
        "train_wall_seconds": time.perf_counter() - started,
        "train_seconds": report.fit.seconds,
        "examples_per_s": report.fit.examples_per_second,
        "train_loss": report.fit.train_loss,
        "train_peak_rss_mb": peak_rss_mb(),
    }


def predict_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the model (its base quantised as recorded) and score the check set once."""
    from guardtune.api import Classifier
    from guardtune.data.readers import load_examples
    from guardtune.evaluation import score_examples

    started = time.perf_counter()
    classifier = Classifier.load(spec["model"])
    loaded = time.perf_counter()
    rows = load_examples(Path(spec["data"]) / "check.csv", classifier.task)
    scoring = time.perf_counter()
    metrics, _, _ = score_examples(classifier, rows)
    seconds = time.perf_counter() - scoring
    return {
        "load_seconds": loaded - started,
        "messages_per_s": len(rows) / seconds,
        "check_macro_f1": float(metrics["macro_f1"]),
        "check_n": len(rows),
        "predict_peak_rss_mb": peak_rss_mb(),
    }


WORKERS = {"train": train_worker, "predict": predict_worker}


def run_worker(kind: str, spec: dict[str, Any], isolate: bool) -> dict[str, Any]:
    """Run a worker in a fresh process (its peak RSS is then its own), or here with ``isolate=False``."""
    if not isolate:
        return WORKERS[kind](spec)
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--spec", json.dumps(spec)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def summary(rows: list[dict[str, Any]], modes: list[str]) -> list[dict[str, Any]]:
    """Per mode over seeds: mean and spread (min, max) of macro-F1 and the mean of the rest."""
    out = []
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        f1 = [r["check_macro_f1"] for r in mine]
        deltas = [r["delta_macro_f1"] for r in mine]
        out.append(
            {
                "mode": mode,
                "seeds": [r["seed"] for r in mine],
                "check_macro_f1_mean": statistics.fmean(f1),
                "check_macro_f1_min": min(f1),
                "check_macro_f1_max": max(f1),
                "delta_macro_f1_mean": statistics.fmean(deltas),
                **{
                    key: statistics.fmean(r[key] for r in mine)
                    for key in (
                        "train_seconds",
                        "examples_per_s",
                        "train_peak_rss_mb",
                        "messages_per_s",
                        "predict_peak_rss_mb",
                    )
                },
            }
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    config, host = result["config"], result["machine"]
    lines = [
        f"Base `{config['base']}`, task `{config['task']}`, `head`, {config['steps']} steps of 16 rows, "
        f"seeds {', '.join(map(str, config['seeds']))}; check set of {result['rows'][0]['check_n']} rows; "
        f"{host['cpu']}, {host['cores']} cores, {config['threads'] or host['threads_allowed']} torch "
        f"threads, torch {host['torch']}, bitsandbytes {config['bitsandbytes']}.",
        "",
        "| mode | seed | check macro-F1 | vs first mode | training loop s | examples/s | train peak RSS MB "
        "| predict msg/s | predict peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        cells = [
            r["mode"],
            str(r["seed"]),
            f"{r['check_macro_f1']:.3f}",
            f"{r['delta_macro_f1']:+.3f}",
            f"{r['train_seconds']:.0f}",
            f"{r['examples_per_s']:.2f}",
            f"{r['train_peak_rss_mb']:.0f}",
            f"{r['messages_per_s']:.1f}",
            f"{r['predict_peak_rss_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(config["seeds"]) > 1:
        lines += [
            "",
            "| mode | check macro-F1 mean (min-max) | mean vs first mode |",
            "|---|---|---:|",
        ]
        for s in result["summary"]:
            lines.append(
                f"| {s['mode']} | {s['check_macro_f1_mean']:.3f} ({s['check_macro_f1_min']:.3f}-"
                f"{s['check_macro_f1_max']:.3f}) | {s['delta_macro_f1_mean']:+.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="gemma-3-270m", help="HF dir, .gguf or gemma-3-270m")
    parser.add_argument("--task", default="pii-intent", choices=["pii-intent", "pii-categories"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, help="training steps (default: the quickstart's for the task)")
    parser.add_argument("--check-n", type=int, help="score only the first N check rows")
    parser.add_argument("--threads", type=int, help="torch threads (default: guardtune's choice)")
    parser.add_argument("--no-isolate", action="store_true", help="run the workers in this process")
    parser.add_argument("--work", type=Path, help="working directory (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return {}
    previous = os.environ.get(THREADS_ENV)
    if args.threads:
        os.environ[THREADS_ENV] = str(args.threads)  # read by load_backbone, also in the workers
    try:
        return run(args)
    finally:  # with --no-isolate the caller's process keeps its own setting
        if previous is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = previous


def run(args: argparse.Namespace) -> dict[str, Any]:
    from guardtune.backbone import describe_machine
    from guardtune.quickstart import DEFAULT_STEPS, write_data

    steps = args.steps or DEFAULT_STEPS[args.task]
    work = args.work or Path(tempfile.mkdtemp(prefix="guardtune-bench-quantize-"))
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        data = work / f"seed{seed}" / "data"
        paths = write_data(args.task, data, seed)
        if args.check_n:  # a shorter check set (the tests' tiny runs)
            import pandas as pd

            pd.read_csv(paths["check"]).head(args.check_n).to_csv(paths["check"], index=False)
        first_f1: float | None = None
        for mode in args.modes:
            spec = {
                "task": args.task,
                "base": args.base,
                "mode": mode,
                "seed": seed,
                "steps": steps,
                "data": str(data),
                "model": str(work / f"seed{seed}" / mode),
            }
            row: dict[str, Any] = {"mode": mode, "seed": seed, "steps": steps}
            row |= run_worker("train", spec, not args.no_isolate)
            row |= run_worker("predict", spec, not args.no_isolate)
            first_f1 = row["check_macro_f1"] if first_f1 is None else first_f1
            row["delta_macro_f1"] = row["check_macro_f1"] - first_f1
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    try:
        import bitsandbytes

        bnb_version = bitsandbytes.__version__
    except ImportError:
        bnb_version = "not installed"
    result = {
        "config": {
            "work": str(work),
            "base": args.base,
            "task": args.task,
            "modes": list(args.modes),
            "seeds": list(args.seeds),
            "steps": steps,
            "check_n": args.check_n,
            "threads": args.threads,
            "bitsandbytes": bnb_version,
        },
        "machine": describe_machine(),
        "rows": rows,
        "summary": summary(rows, list(args.modes)),
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
