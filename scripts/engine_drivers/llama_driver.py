"""Runs a guardtune GGUF export in llama-cpp-python; executed by the engine's own interpreter.

Usage: python llama_driver.py REQUEST.json RESULT.json

With ``vocab_only`` the driver only tokenizes the request's ``prompts`` (see ``tokenize_only``).

The request names the GGUF file, the messages, the label tokens (``label_token_ids``) and the
answers a ``generate`` guard may give (``answers``). For every message the driver renders the
file's own chat template around it (as llama.cpp's chat endpoints do), tokenizes it with
llama.cpp's tokenizer (which adds BOS), and writes: the token ids, the probabilities of the label
tokens as the next token (softmax over their logits), the grammar-constrained greedy answer and
the free greedy answer. With ``prompt_token_ids`` (one list per message) it scores and
answers those ids instead of its own, and still reports its own. Timing and the engine's version
go along. Standard library, numpy, jinja2 and llama_cpp only: guardtune is not installed in this
interpreter.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import jinja2
import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar


def grammar_for(answers: list[str]) -> LlamaGrammar:
    # One alternative per answer: llama.cpp can then only sample one of the task's answers,
    # as guardtune's constrained decoder does.
    alternatives = " | ".join(json.dumps(answer) for answer in answers)
    return LlamaGrammar.from_string(f"root ::= {alternatives}", verbose=False)


def tokenize_only(request: dict) -> None:
    """llama.cpp's ids of ``prompts`` (rendered prompts without BOS, which it adds), vocabulary
    only: no weights are loaded."""
    llm = Llama(model_path=request["model"], vocab_only=True, verbose=False)
    rows = [
        {"token_ids": llm.tokenize(p.encode("utf-8"), add_bos=True, special=True)} for p in request["prompts"]
    ]
    result = {"engine": "llama-cpp-python", "version": llama_cpp.__version__, "rows": rows}
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        json.dump(result, out)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        request = json.load(file)
    if request.get("vocab_only"):
        tokenize_only(request)
        return
    started = time.perf_counter()
    llm = Llama(
        model_path=request["model"],
        n_ctx=request.get("n_ctx", 512),
        n_batch=512,
        n_threads=request.get("threads", 2),
        n_threads_batch=request.get("threads", 2),
        verbose=False,
    )
    load_seconds = time.perf_counter() - started
    template = jinja2.Environment().from_string(llm.metadata["tokenizer.chat_template"])
    label_ids = request["label_token_ids"]
    answers: list[str] = request.get("answers") or []
    grammar = grammar_for(answers) if answers else None
    generate = request.get("generate", True)
    rows = []
    latencies = []
    given = request.get("prompt_token_ids")
    for i, message in enumerate(request["messages"]):
        prompt = template.render(messages=[{"role": "user", "content": message}])
        t0 = time.perf_counter()
        own = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        # Given ids (guardtune's) score the same tokens; llama.cpp's own ids are reported beside.
        tokens = given[i] if given else own
        llm.reset()
        llm.eval(tokens)
        # The logits of the last prompt token (the only row the batch asked for).
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        chosen = logits[label_ids].astype(np.float64)
        probs = np.exp(chosen - chosen.max())
        latencies.append(time.perf_counter() - t0)
        row = {"token_ids": own, "scores": (probs / probs.sum()).tolist()}
        if generate and grammar is not None:
            # The grammar lets llama.cpp spell an answer in more tokens than its own tokenization
            # (" non" + "e"): a token per character is the most it can take.
            longest = max(len(a) for a in answers) + 1
            constrained = llm.create_completion(tokens, max_tokens=longest, temperature=0.0, grammar=grammar)
            free = llm.create_completion(tokens, max_tokens=longest, temperature=0.0)
            row["constrained"] = constrained["choices"][0]["text"]
            row["greedy"] = free["choices"][0]["text"]
        rows.append(row)
    result = {
        "engine": "llama-cpp-python",
        "version": llama_cpp.__version__,
        "load_seconds": load_seconds,
        "score_seconds": latencies,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()
