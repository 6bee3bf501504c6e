"""Does the dual-path chat answer what it should and refuse what it should? Measured over HTTP.

Starts ``guardtune serve`` on a trained ``pii-intent`` guard, then sends check-set messages (templates
the training generator never uses) through ``/v1/chat/completions`` with the official ``openai``
client, one user message per conversation:

* ``assistant-requests`` rows (questions and requests that hold no personal information) should be
  answered: a ``content_filter`` finish on them is a false refusal, whether the guard flagged the
  question or the base model's reply;
* ``asking`` and ``giving`` rows should be refused.

    python examples/pii/chat_check.py --model guardtune-quickstart/model --out runs/chat-check

Writes ``OUT/chat_check.csv`` (every message, its finish reason and which stage flagged it),
``OUT/server.log`` (the server's log) and
``OUT/chat_check.json`` (the shares), and prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
from openai import OpenAI

from guardtune.atomic import atomic_file
from guardtune.data.synth import generate, list_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    model: Path, port: int, max_new_tokens: int, timeout: float, log: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "guardtune", "serve", "--model", f"pii={model}",
        "--port", str(port), "--max-new-tokens", str(max_new_tokens), "--timeout", str(timeout),
    ]  # fmt: skip
    # The server's log goes to a file: an undrained pipe would block the server once full.
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            stderr = log.read_text(encoding="utf-8", errors="replace")
            raise SystemExit(f"guardtune serve exited with {server.returncode}: {stderr.strip()[-400:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.terminate()
    raise SystemExit("guardtune serve did not become ready within 300 s")


def check_rows(n_per_kind: int, seed: int) -> pd.DataFrame:
    """Assistant-directed requests without PII, and asking and giving messages, all check templates."""
    # asking and giving are about a quarter of the rows each; 6 rows per wanted message is plenty.
    frame = generate(
        "pii-intent", max(6 * n_per_kind, len(list_families("pii-intent"))), seed=seed, split="check"
    )
    requests = generate("pii-intent", n_per_kind, seed=seed, split="check", families=["assistant-requests"])
    asking = frame[frame["label"] == "asking"].head(n_per_kind)
    giving = frame[frame["label"] == "giving"].head(n_per_kind)
    rows = pd.concat([requests, asking, giving], ignore_index=True)
    rows["expected"] = ["answer" if label == "none" else "refuse" for label in rows["label"]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="a trained pii-intent model directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=100, help="messages of each kind (requests, asking, giving)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="the server's per-request timeout (a busy CPU generates slowly)",
    )
    args = parser.parse_args()

    rows = check_rows(args.n, args.seed)
    port = free_port()
    args.out.mkdir(parents=True, exist_ok=True)
    server = start_server(args.model, port, args.max_new_tokens, args.timeout, args.out / "server.log")
    client = OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=os.environ.get("GUARDTUNE_API_KEY", "none"),
        timeout=args.timeout + 30,
        max_retries=0,
    )
    finishes, stages, replies = [], [], []
    try:
        for i, text in enumerate(rows["text"]):
            response = client.chat.completions.create(
                model="pii", messages=[{"role": "user", "content": text}]
            )
            verdicts = (response.model_extra or {}).get("guard", [])
            finishes.append(response.choices[0].finish_reason)
            stages.append(",".join(v["stage"] for v in verdicts if v["flagged"]))
            replies.append(response.choices[0].message.content or "")
            if (i + 1) % 25 == 0:
                print(f"{i + 1}/{len(rows)} messages", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=60)
    rows["finish_reason"], rows["flagged_at"], rows["reply"] = finishes, stages, replies
    refused = rows["finish_reason"] == "content_filter"
    answer = rows["expected"] == "answer"
    summary = {
        "model": str(args.model),
        "n_requests": int(answer.sum()),
        "requests_answered": float((~refused[answer]).mean()),
        "requests_refused_at_input": float((rows.loc[answer, "flagged_at"].str.contains("input")).mean()),
        "requests_refused_at_output": float((rows.loc[answer, "flagged_at"].str.contains("output")).mean()),
        "asking_refused": float(refused[rows["label"] == "asking"].mean()),
        "giving_refused": float(refused[rows["label"] == "giving"].mean()),
    }
    with atomic_file(args.out / "chat_check.csv") as tmp:
        rows.to_csv(tmp, index=False)
    with atomic_file(args.out / "chat_check.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
