"""Soak test of the guard server: minutes of mixed traffic at high concurrency, then SIGTERM under load.

Starts ``guardtune serve`` in a subprocess with its default limits and sends, from ``--concurrency``
clients, a mix of valid requests (classify, and moderations with OpenAI text parts), invalid ones
(lone surrogates, malformed JSON, unknown model, image parts, wrong types), oversized ones (too many
characters, too many inputs, a body over the limit) and cancelled ones (the client disconnects
mid-request). Reports status counts per kind, p50 / p99 latency of the valid requests, and the
server's resident memory at start, after warm-up and at the end. Then it sends SIGTERM while the
load goes on and checks that the requests in flight finish, that new ones are refused, and that the
server exits 0.

    python benchmarks/soak_serve.py --model runs/pii --minutes 10 --concurrency 64
    python benchmarks/soak_serve.py --minutes 1        # trains a short guard on the embedded Gemma first
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from bench_predict import proc_status_mb
from bench_serve import free_port, percentiles, quick_guard, start_server

from guardtune.data.synth import generate

JSON = {"content-type": "application/json"}
# Status codes each kind of request may get; anything else is unexpected. 503 (queue full,
# stopping) and 504 (timeout) are the server saying so, allowed for the valid kinds.
EXPECTED = {
    "valid": {200, 503, 504},
    "invalid": {400, 404, 422},
    "oversized": {413},
    "cancelled": {200, 503, 504},
}
# Server limits the oversized requests exceed (guardtune serve's defaults).
MAX_CHARS, MAX_INPUTS, MAX_BODY = 4000, 64, 1_000_000


class Outcome(NamedTuple):
    kind: str
    started: float
    ended: float
    result: str  # an HTTP status code, "cancelled", or the client exception's name


def rss_mb(pid: int) -> float | None:
    """A process's resident set size now (Linux ``VmRSS``) in MB, or None without /proc."""
    return proc_status_mb("VmRSS", pid)


def make_request(rng: random.Random, texts: list[str]) -> tuple[str, str, bytes, float | None]:
    """(kind, path, JSON body bytes, client-side abort delay or None) of one random request."""
    draw = rng.random()
    some = [rng.choice(texts) for _ in range(rng.randint(1, 4))]
    if draw < 0.55:
        return "valid", "/v1/classify", json.dumps({"model": "guard", "input": some}).encode(), None
    if draw < 0.70:
        parts = [{"type": "text", "text": text} for text in some]
        return "valid", "/v1/moderations", json.dumps({"input": parts}).encode(), None
    if draw < 0.80:
        bad = rng.choice(
            [
                json.dumps({"model": "guard", "input": ["fine", "\ud800 lone surrogate"]}).encode(),
                b'{"model": "guard", "input": ',
                json.dumps({"model": "nope", "input": "hi"}).encode(),
                json.dumps(
                    {"input": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
                ).encode(),
                json.dumps({"model": "guard", "input": 5}).encode(),
            ]
        )
        return "invalid", rng.choice(["/v1/classify", "/v1/moderations"]), bad, None
    if draw < 0.90:
        choice = rng.random()
        if choice < 0.4:
            body: Any = {"model": "guard", "input": "x" * (MAX_CHARS + 1)}
        elif choice < 0.8:
            body = {"model": "guard", "input": ["hi"] * (MAX_INPUTS + 1)}
        else:
            body = {"model": "guard", "input": "y" * (MAX_BODY + 10)}
        return "oversized", "/v1/classify", json.dumps(body).encode(), None
    body = {"model": "guard", "input": some}
    return "cancelled", "/v1/classify", json.dumps(body).encode(), rng.uniform(0.005, 0.3)


async def one_request(http: httpx.AsyncClient, rng: random.Random, texts: list[str]) -> Outcome:
    kind, path, content, abort_after = make_request(rng, texts)
    started = time.monotonic()
    try:
        call = http.post(path, content=content, headers=JSON)
        if abort_after is None:
            result = str((await call).status_code)
        else:
            try:
                result = str((await asyncio.wait_for(call, abort_after)).status_code)
            except TimeoutError:
                result = "cancelled"  # the client hung up; the server must not mind
    except httpx.HTTPError as exc:
        result = type(exc).__name__
    return Outcome(kind, started, time.monotonic(), result)


async def soak(
    url: str, server: subprocess.Popen, texts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    outcomes: list[Outcome] = []
    rss = {"start": rss_mb(server.pid)}
    begin = time.monotonic()
    load_end = begin + args.minutes * 60
    term_at: float | None = None
    stop_sending = asyncio.Event()
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60, limits=limits) as http:
            while not stop_sending.is_set():
                outcomes.append(await one_request(http, rng, texts))

    async def monitor() -> None:
        nonlocal term_at
        warmed = False
        while time.monotonic() < load_end:
            await asyncio.sleep(1)
            if not warmed and time.monotonic() - begin >= args.warmup_s:
                rss["after_warmup"] = rss_mb(server.pid)
                warmed = True
        rss["end"] = rss_mb(server.pid)
        term_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        await asyncio.sleep(args.after_term_s)  # keep sending: these requests must be refused
        stop_sending.set()

    await asyncio.gather(monitor(), *(client(args.seed * 1000 + i) for i in range(args.concurrency)))
    assert term_at is not None
    try:
        code = await asyncio.to_thread(server.wait, 60)
    except subprocess.TimeoutExpired:
        server.kill()
        code = None
    exited = time.monotonic()
    return summarise(outcomes, term_at, exited, code, rss, args)


def summarise(
    outcomes: list[Outcome],
    term_at: float,
    exited: float,
    code: int | None,
    rss: dict[str, float | None],
    args: argparse.Namespace,
) -> dict[str, Any]:
    before = [o for o in outcomes if o.ended <= term_at]
    in_flight = [o for o in outcomes if o.started <= term_at < o.ended]
    after = [o for o in outcomes if o.started > term_at]
    counts = {kind: dict(Counter(o.result for o in before if o.kind == kind)) for kind in EXPECTED}
    unexpected = {
        kind: {r: n for r, n in found.items() if r != "cancelled" and int(r) not in EXPECTED[kind]}
        if all(r == "cancelled" or r.isdigit() for r in found)
        else found
        for kind, found in counts.items()
    }
    valid = [o.ended - o.started for o in before if o.kind == "valid" and o.result == "200"]
    p50, p99 = percentiles(valid)
    after_warmup = rss.get("after_warmup")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "requests": len(before),
        "requests_per_s": len(before) / (term_at - min(o.started for o in outcomes)),
        "status_counts": counts,
        "unexpected": {kind: found for kind, found in unexpected.items() if found},
        "valid_p50_ms": p50,
        "valid_p99_ms": p99,
        "rss_mb": rss,
        "rss_growth_after_warmup_mb": None
        if after_warmup is None or rss.get("end") is None
        else rss["end"] - after_warmup,  # type: ignore[operator]
        "sigterm": {
            "in_flight": dict(Counter(o.result for o in in_flight)),
            "in_flight_unfinished": sum(
                1 for o in in_flight if not (o.result.isdigit() or o.result == "cancelled")
            ),
            "sent_after": dict(Counter(o.result for o in after)),
            "sent_after_served": sum(1 for o in after if o.result == "200"),
            # uvicorn notices the signal on its next tick (0.1 s) and then closes its socket: a
            # request sent in that instant is still served, none after it.
            "last_served_ms_after_signal": max(
                [(o.started - term_at) * 1000 for o in after if o.result.isdigit()], default=None
            ),
            "exit_code": code,
            "seconds_to_exit": exited - term_at,
        },
    }


def markdown(result: dict[str, Any], model: Path) -> str:
    rss, term = result["rss_mb"], result["sigterm"]
    counts = result["status_counts"]

    def shown(found: dict[str, int]) -> str:
        return json.dumps(found, sort_keys=True)

    lines = [
        f"Soak of {result['date']}: {result['minutes']} min at concurrency {result['concurrency']}, "
        f"{result['cpus']} CPU cores, model {model}",
        "",
        "| kind | status counts |",
        "|---|---|",
        *(f"| {kind} | {shown(found)} |" for kind, found in counts.items()),
        "",
        f"- {result['requests']} requests ({result['requests_per_s']:.1f}/s); "
        f"unexpected statuses: {result['unexpected'] or 'none'}",
        f"- valid requests answered 200: p50 {result['valid_p50_ms']:.0f} ms, "
        f"p99 {result['valid_p99_ms']:.0f} ms",
        f"- server RSS: start {rss['start']:.0f} MB, after warm-up {rss.get('after_warmup') or 0:.0f} MB, "
        f"end {rss['end']:.0f} MB (growth after warm-up {result['rss_growth_after_warmup_mb']:+.0f} MB)",
        f"- SIGTERM under load: in flight {shown(term['in_flight'])} ({term['in_flight_unfinished']} "
        f"unfinished); sent after it {shown(term['sent_after'])} ({term['sent_after_served']} served, "
        f"the last sent {term['last_served_ms_after_signal'] or 0:.0f} ms after the signal); "
        f"exit code {term['exit_code']} after {term['seconds_to_exit']:.1f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained model directory (default: train a short one)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="RSS is read again after this")
    parser.add_argument("--after-term-s", type=float, default=3.0, help="load kept up after SIGTERM")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    model = args.model or quick_guard(args.train_steps, args.dtype)
    texts = list(generate("pii-intent", 500, 123, split="check")["text"])
    port = free_port()
    server = start_server(model, port, ["--dtype", args.dtype])
    try:
        result = asyncio.run(soak(f"http://127.0.0.1:{port}", server, texts, args))
    finally:
        if server.poll() is None:
            server.kill()
    print(markdown(result, model))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["sigterm"]["exit_code"] == 0 else 1)
