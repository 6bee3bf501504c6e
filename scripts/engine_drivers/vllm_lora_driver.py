"""Runs guardtune's PEFT adapters on their base in one vLLM engine; executed by the engine's own
interpreter.

Usage: python vllm_lora_driver.py REQUEST.json RESULT.json

The request names the base directory and the guards: for each, its adapter directory (guardtune's
model directory is a PEFT adapter), its rendered prompts (text, tokenized here by vLLM's tokenizer
of the base; the ids go into the result) and the label tokens its answer starts with. The engine is
made once with ``enable_lora=True``; every guard's prompts go into one ``LLM.generate`` call, each
prompt with its guard's ``LoRARequest``, as a server holding several guards on one base batches
them. Per prompt it writes the constrained answer (one greedy token among the label tokens,
``allowed_token_ids``), the label tokens' probabilities at that step (log-probabilities after that
constraint: the softmax over the label tokens' logits, guardtune's score) and the free greedy
answer. When vLLM refuses, the engine's own error is the result. Standard library and vllm only:
guardtune is not installed in this interpreter.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def write(path: str, result: dict) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(result, out)


def refusal(error: BaseException, version: str) -> dict:
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    return {
        "engine": "vllm",
        "version": version,
        "error": f"{type(error).__name__}: {error}",
        "root_error": f"{type(root).__name__}: {root}",
        "traceback": traceback.format_exc()[-4000:],
    }


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        request = json.load(file)
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    guards = request["guards"]
    started = time.perf_counter()
    try:
        llm = LLM(
            model=request["base"],
            enable_lora=True,
            max_loras=len(guards),
            max_lora_rank=request.get("max_lora_rank", 16),
            dtype=request.get("dtype", "float32"),
            max_model_len=request.get("max_model_len", 512),
            # Log-probabilities after allowed_token_ids: over the label tokens only, as guardtune
            # scores them.
            logprobs_mode="processed_logprobs",
            seed=0,
        )
    except Exception as error:  # the engine's own refusal is the result here
        write(sys.argv[2], refusal(error, vllm.__version__))
        return
    load_seconds = time.perf_counter() - started
    tokenizer = llm.get_tokenizer()
    # The rendered prompts hold BOS already: tokenized without adding special tokens, as vLLM
    # tokenizes a rendered chat.
    own = [[tokenizer(text, add_special_tokens=False)["input_ids"] for text in g["prompts"]] for g in guards]
    prompts, loras, constrained, free = [], [], [], []
    for number, guard in enumerate(guards, start=1):
        lora = LoRARequest(guard["name"], number, guard["adapter"])
        labels = guard["label_token_ids"]
        constrained.append(
            SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=labels, logprobs=len(labels))
        )
        free.append(SamplingParams(temperature=0.0, max_tokens=guard.get("max_tokens", 8)))
        for ids in own[number - 1]:
            prompts.append({"prompt_token_ids": ids})
            loras.append(lora)
    owners = [g for g, ids in enumerate(own) for _ in ids]
    try:
        t0 = time.perf_counter()
        first = llm.generate(prompts, [constrained[g] for g in owners], lora_request=loras, use_tqdm=False)
        seconds = time.perf_counter() - t0
        greedy = llm.generate(prompts, [free[g] for g in owners], lora_request=loras, use_tqdm=False)
    except Exception as error:
        write(sys.argv[2], refusal(error, vllm.__version__))
        return
    results = [{"name": guard["name"], "rows": []} for guard in guards]
    for owner, prompt, step, answer in zip(owners, prompts, first, greedy, strict=True):
        labels = guards[owner]["label_token_ids"]
        completion = step.outputs[0]
        logprobs = completion.logprobs[0] if completion.logprobs else {}
        scores = [math.exp(logprobs[t].logprob) if t in logprobs else 0.0 for t in labels]
        results[owner]["rows"].append(
            {
                "token_ids": prompt["prompt_token_ids"],
                "token": completion.token_ids[0],
                "scores": scores,
                "greedy": answer.outputs[0].text,
            }
        )
    write(
        sys.argv[2],
        {
            "engine": "vllm",
            "version": vllm.__version__,
            "load_seconds": load_seconds,
            "batch_seconds": seconds,
            "guards": results,
        },
    )


if __name__ == "__main__":
    main()
