"""bf16 merge -> unmerge drift on the server's chat path: does the merge policy change replies or scores?

A single guard on a bf16 base is merged into it (``guardtune.merging.should_merge``); the first
chat request makes PEFT unmerge it in place, in bf16. This compares, on the same model:
the base weights before and after that round trip, the greedy chat replies against a base that
was never merged, and the classify scores merged / after a chat request / never merged / fp32.

    python benchmarks/merge_drift.py --model runs/pii     # or without --model: trains a 20-step guard
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_serve import quick_guard

from guardtune.api import Classifier
from guardtune.serve import load_guards
from guardtune.serve.chat import generate_reply

TEXTS = ["whats ur number", "gg nice map", "call me at my street", "where do u live", "fun level win",
         "my email is bob@example.com", "this game is so fun", "send me ur snap"]  # fmt: skip
PROMPTS = ["Tell me a fun fact about cats.", "What is the capital of France?", "Write a haiku about rain.",
           "How do I boil an egg?", "Name three colours."]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="trained model directory (default: train a short one)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    model = args.model or quick_guard(20, "bf16")

    fp32 = Classifier.load(model, dtype="fp32", merge=False).predict_proba(TEXTS)
    plain = load_guards({"a": model, "b": model}, dtype="bf16")  # two guards on one base: never merged
    base = plain["a"].backbone
    before = {n: p.detach().clone() for n, p in base.model.named_parameters() if "base_layer.weight" in n}
    unmerged = plain["a"].classifier.predict_proba(TEXTS)
    chat = [[{"role": "user", "content": p}] for p in PROMPTS]
    plain_replies = [generate_reply(base, m, args.max_new_tokens).text for m in chat]
    del plain, base

    guard = load_guards({"g": model}, dtype="bf16")["g"]  # one guard: merged by the policy
    merged = guard.classifier.predict_proba(TEXTS)
    replies = [generate_reply(guard.backbone, m, args.max_new_tokens).text for m in chat]  # unmerges
    after = dict(guard.backbone.model.named_parameters())
    changed = sum(int((after[n].detach() != w).sum()) for n, w in before.items())
    largest = max(float((after[n].detach().float() - w.float()).abs().max()) for n, w in before.items())
    after_chat = guard.classifier.predict_proba(TEXTS)
    same = sum(a == b for a, b in zip(replies, plain_replies, strict=True))

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        return round(float(np.abs(a - b).max()), 4)

    labels = {name: s.argmax(1).tolist() for name, s in [("fp32", fp32), ("merged", merged),
              ("unmerged", unmerged), ("after_chat", after_chat)]}  # fmt: skip
    result = {
        "base_weights_changed_by_round_trip": f"{changed / sum(w.numel() for w in before.values()):.2%}",
        "largest_weight_change": largest,
        "chat_replies_identical": f"{same}/{len(chat)}",
        "max_score_gap_merged_vs_fp32": gap(merged, fp32),
        "max_score_gap_unmerged_vs_fp32": gap(unmerged, fp32),
        "max_score_gap_after_chat_vs_merged": gap(after_chat, merged),
        "max_score_gap_after_chat_vs_unmerged": gap(after_chat, unmerged),
        "labels_agree": len({json.dumps(v) for v in labels.values()}) == 1,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
