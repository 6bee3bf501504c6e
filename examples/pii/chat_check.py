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
``OUT/chat_check.json`` (the shares), and prints them. The server returns only its refusal for a
reply it withheld; once it has stopped, the script writes each such reply again in-process (greedy,
so the same text) with the guard's scores on it, in the CSV's ``withheld_reply`` and
``withheld_scores`` columns, and prints them: what the guard flagged, not just that it did.
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
from guardtune.classifier import Classifier
from guardtune.data.synth import generate, list_families
from guardtune.serve.chat import generate_reply
from guardtune.serve.settings import TRANSCRIPT_PREAMBLE


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


def withheld_replies(model: Path, texts: list[str], max_new_tokens: int) -> tuple[list[str], list[str]]:
    """The base's replies to ``texts`` as the server wrote them (greedy, its default preamble), and
    the guard's scores on each as JSON."""
    guard = Classifier.load(model)
    replies, scores = [], []
    for text in texts:
        reply = generate_reply(
            guard.method.backbone, [{"role": "user", "content": text}], max_new_tokens, TRANSCRIPT_PREAMBLE
        )
        prediction = guard.predict(reply.text)
        assert not isinstance(prediction, list)
        replies.append(reply.text)
        scores.append(json.dumps({k: round(v, 3) for k, v in prediction.scores.items()}))
    return replies, scores


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
    at_output = rows["flagged_at"].str.contains("output")
    rows["withheld_reply"], rows["withheld_scores"] = "", ""
    if at_output.any():
        withheld = withheld_replies(args.model, rows.loc[at_output, "text"].tolist(), args.max_new_tokens)
        rows.loc[at_output, "withheld_reply"], rows.loc[at_output, "withheld_scores"] = withheld
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
    for _, row in rows[at_output].iterrows():
        print(f"withheld: {row['text']!r} -> {row['withheld_reply']!r} {row['withheld_scores']}")


if __name__ == "__main__":
    main()
