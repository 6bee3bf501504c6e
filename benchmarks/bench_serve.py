"""Guard server throughput and latency against calling ``Classifier.predict`` in-process.

Starts ``guardtune serve`` on 127.0.0.1 in a subprocess, sends single-text ``/v1/classify``
requests at several concurrency levels, and compares with the same model called in-process
(one text per call, and batches of the same sizes). Prints a Markdown table.

    python benchmarks/bench_serve.py --model runs/pii                 # a trained model directory
    python benchmarks/bench_serve.py                                  # trains a short guard first

Without ``--model`` a ``pii-intent`` head guard is trained for ``--train-steps`` steps on the
embedded Gemma 3 270M (speed does not depend on how well it is trained).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from bench_predict import vm_hwm_mb

from guardtune.api import Classifier, train
from guardtune.data.synth import generate
from guardtune.train import TrainSettings


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ms = np.array(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def in_process(model: Path, texts: list[str], sizes: list[int], dtype: str) -> list[dict]:
    classifier = Classifier.load(model, dtype=dtype)
    classifier.predict(texts[:8])  # warm-up
    rows = []
    for size in sizes:
        latencies = []
        calls = max(len(texts) // size, 5)
        start = time.perf_counter()
        for i in range(calls):
            chunk = [texts[(i * size + j) % len(texts)] for j in range(size)]
            began = time.perf_counter()
            classifier.predict(chunk if size > 1 else chunk[0])
            latencies.append(time.perf_counter() - began)
        wall = time.perf_counter() - start
        p50, p99 = percentiles(latencies)
        rows.append(
            {
                "mode": f"in-process Classifier.predict, {size} text(s) per call",
                "concurrency": 1,
                "texts_per_s": calls * size / wall,
                "calls_per_s": calls / wall,
                "p50_ms": p50,
                "p99_ms": p99,
            }
        )
    del classifier
    gc.collect()
    return rows


async def load(url: str, texts: list[str], concurrency: int, n: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    next_index = 0
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=120) as http:

        async def worker() -> None:
            nonlocal next_index, errors
            while next_index < n:
                i = next_index
                next_index += 1
                began = time.perf_counter()
                response = await http.post(
                    "/v1/classify", json={"model": "guard", "input": texts[i % len(texts)]}
                )
                latencies.append(time.perf_counter() - began)
                errors += response.status_code != 200

        for text in texts[:10]:  # warm-up
            await http.post("/v1/classify", json={"model": "guard", "input": text})
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return wall, latencies, errors


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: Path, port: int, options: list[str]) -> subprocess.Popen:
    """``guardtune serve`` on 127.0.0.1:``port`` in a subprocess, returned once /healthz says ok.

    Its log goes to a temporary file, not a pipe: a pipe nobody reads fills up and stalls the server.
    """
    command = [sys.executable, "-m", "guardtune", "serve", "--model", f"guard={model}", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "GUARDTUNE_API_KEY"}
    log = tempfile.TemporaryFile()  # noqa: SIM115  # the server writes to it for its whole life
    server = subprocess.Popen([*command, *options], env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", trust_env=False, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit("server did not start in 300 s")
        time.sleep(0.5)


def served(model: Path, texts: list[str], levels: list[int], n: int, args: argparse.Namespace) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    options = [
        "--dtype", args.dtype, "--max-batch-size", str(args.max_batch_size),
        "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "1024",
    ]  # fmt: skip
    server = start_server(model, port, options)
    try:
        rows = []
        for concurrency in levels:
            wall, latencies, errors = asyncio.run(load(url, texts, concurrency, n))
            p50, p99 = percentiles(latencies)
            rows.append(
                {
                    "mode": "guardtune serve, POST /v1/classify, 1 text per request",
                    "concurrency": concurrency,
                    "texts_per_s": n / wall,
                    "calls_per_s": n / wall,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "errors": errors,
                }
            )
        metrics = httpx.get(url + "/metrics", trust_env=False).text
        batches = [line for line in metrics.splitlines() if line.startswith("guardtune_batch_size_")]
        rows.append({"batch_metrics": batches, "server_peak_rss_mb": vm_hwm_mb(server.pid)})
        return rows
    finally:
        server.terminate()
        server.wait(30)


def quick_guard(steps: int, dtype: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="guardtune-bench-"))
    generate("pii-intent", 400, 0).to_csv(folder / "train.csv", index=False)
    settings = TrainSettings(max_steps=steps, batch_size=16, max_length=64, dtype=dtype)
    train("pii-intent", folder / "train.csv", folder / "model", settings=settings)
    return folder / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained model directory (default: train a short one)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    model = args.model or quick_guard(args.train_steps, args.dtype)
    texts = list(generate("pii-intent", 500, 123, split="check")["text"])
    rows = in_process(model, texts[: args.requests], sorted(set([1, *args.concurrency])), args.dtype)
    rows += served(model, texts, args.concurrency, args.requests, args)

    print(f"\nmodel: {model}; {os.cpu_count()} CPU cores; {args.requests} requests per level\n")
    print("| how | concurrency | texts/s | requests (calls)/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if "batch_metrics" in row:
            continue
        print(
            f"| {row['mode']} | {row['concurrency']} | {row['texts_per_s']:.1f} | {row['calls_per_s']:.1f} "
            f"| {row['p50_ms']:.0f} | {row['p99_ms']:.0f} |"
        )
    errors = sum(row.get("errors", 0) for row in rows)
    print(f"\nserver errors: {errors}")
    print("\n".join(rows[-1]["batch_metrics"]))
    peak = rows[-1]["server_peak_rss_mb"]
    print(f"server peak RSS: {peak:.0f} MB" if peak is not None else "server peak RSS: not available here")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
