"""Runs a guardtune merged export in vLLM's offline API; executed by the engine's own interpreter.

Usage: python vllm_driver.py REQUEST.json RESULT.json

The request names the export directory, the messages and the engine arguments (``runner``,
``convert``, ``hf_overrides``). The driver renders each message with the export's chat template,
tokenizes the rendered prompt without adding special tokens (the template holds BOS, as vLLM's
chat endpoints tokenize it), and classifies the token ids with ``LLM.classify`` (or the
request's ``prompt_token_ids``). It writes its token ids and vLLM's probabilities per message,
or, when vLLM refuses the export, the engine's own error (type and message) so the caller can
show what vLLM cannot do. Standard library and vllm only: guardtune is not installed in this
interpreter.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

# Keep the engine core in this process (its errors then reach the except below, not a child's
# log) and its KV cache small: the prompts are a few dozen tokens.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def write(path: str, result: dict) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(result, out)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        request = json.load(file)
    import vllm
    from vllm import LLM

    started = time.perf_counter()
    engine_args = {
        "model": request["model"],
        "runner": request.get("runner", "pooling"),
        "dtype": request.get("dtype", "float32"),
        "max_model_len": request.get("max_model_len", 512),
        "seed": 0,
    }
    if request.get("convert"):
        engine_args["convert"] = request["convert"]
    if request.get("hf_overrides"):
        engine_args["hf_overrides"] = request["hf_overrides"]
    try:
        llm = LLM(**engine_args)
    except Exception as error:  # the engine's own refusal is the result here
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        write(
            sys.argv[2],
            {
                "engine": "vllm",
                "version": vllm.__version__,
                "error": f"{type(error).__name__}: {error}",
                "root_error": f"{type(root).__name__}: {root}",
                "traceback": traceback.format_exc()[-4000:],
            },
        )
        return
    load_seconds = time.perf_counter() - started
    tokenizer = llm.get_tokenizer()
    messages = request["messages"]
    ids = []
    for message in messages:
        if tokenizer.chat_template is None:  # a head export classifies the message itself
            ids.append(tokenizer(message)["input_ids"])
            continue
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False)
        ids.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # Given ids (guardtune's) classify the same tokens; the driver's own ids are reported beside.
    scored = request.get("prompt_token_ids") or ids
    t0 = time.perf_counter()
    outputs = llm.classify([{"prompt_token_ids": row} for row in scored], use_tqdm=False)
    batch_seconds = time.perf_counter() - t0
    single = []
    for row in scored[: request.get("single_messages", 0)]:
        t1 = time.perf_counter()
        llm.classify([{"prompt_token_ids": row}], use_tqdm=False)
        single.append(time.perf_counter() - t1)
    write(
        sys.argv[2],
        {
            "engine": "vllm",
            "version": vllm.__version__,
            "load_seconds": load_seconds,
            "batch_seconds": batch_seconds,
            "single_seconds": single,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rows": [
                {"token_ids": row, "scores": list(output.outputs.probs)}
                for row, output in zip(ids, outputs, strict=True)
            ],
        },
    )


if __name__ == "__main__":
    main()
