"""How often does a pii-intent guard withhold a harmless assistant reply? Measured without the check set.

The dual-path chat screens the base model's reply as well as the user's message, so a guard that
reads "The square root of 4 is 2." or "Hello, I'm the assistant." as a disclosure refuses questions
it should answer. This script measures that on requests written from the *training* templates of
the ``assistant-requests`` family, so training data for replies can be written and judged without
reading the check pools:

1. the family's training templates are split in two halves by a hash of the template (``A``: read
   them to decide what the training data lacks; ``B``: only measure on them);
2. each template is rendered ``--per-template`` times, and the base model (every adapter off)
   answers each request greedily with the chat server's preamble, as ``guardtune serve`` does;
3. every guard in ``--models`` scores every reply; a reply is withheld when its most likely label
   is not ``none``.

    python examples/pii/reply_screen.py --models runs/qs-s0/model runs/qs-s1/model --out runs/replies

The replies depend only on the base and the arguments that wrote them, so they are written once to
``OUT/replies.csv`` (the arguments and the base in ``OUT/replies.json``) and read from there while
those stay the same (``--regenerate`` writes them again regardless). Every guard must be trained on
the base that wrote them. Scores go to ``OUT/scores.csv``, the
withheld share per model and half to ``OUT/summary.json`` and the terminal.
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from guardtune.atomic import atomic_file
from guardtune.classifier import Classifier
from guardtune.data.synth.compose import Renderer
from guardtune.data.synth.families import load_families
from guardtune.data.synth.style import apply_style
from guardtune.modeldir import read_manifest
from guardtune.serve.chat import generate_reply
from guardtune.serve.settings import TRANSCRIPT_PREAMBLE

FAMILY = "assistant-requests"


def template_half(template: str) -> str:
    """``A`` or ``B``: a fixed split of the templates that does not move when others are added."""
    return "A" if zlib.crc32(template.encode("utf-8")) % 2 == 0 else "B"


def request_rows(per_template: int, seed: int) -> pd.DataFrame:
    """Every training template of the family rendered ``per_template`` times, with its half."""
    family = load_families("pii-intent")[FAMILY]
    renderer = Renderer(seed)
    rows = []
    for template in family.pools["train"]["none"]:
        for _ in range(per_template):
            pieces = renderer.render(template, renderer.context(family))
            text = apply_style(pieces, renderer.rng.choice(family.styles), renderer.rng)
            rows.append({"template": template, "half": template_half(template), "text": text})
    return pd.DataFrame(rows)


def base_replies(model: Path, rows: pd.DataFrame, max_new_tokens: int) -> list[str]:
    """The base's greedy replies, as the chat server writes them (adapters off, its preamble)."""
    backbone = Classifier.load(model).method.backbone
    return [
        generate_reply(
            backbone, [{"role": "user", "content": text}], max_new_tokens, TRANSCRIPT_PREAMBLE
        ).text
        for text in tqdm(rows["text"], desc="base replies", unit="reply")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="pii-intent model directories")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-template", type=int, default=3, help="renderings of each request template")
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--max-new-tokens", type=int, default=48, help="as chat_check.py's default")
    parser.add_argument("--regenerate", action="store_true", help="write OUT/replies.csv again")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    bases = {str(model): read_manifest(model).base for model in args.models}
    if len(set(bases.values())) > 1:
        raise SystemExit(f"--models: every guard must share one base, found {bases}")
    written_by = {
        "base": bases[str(args.models[0])],
        "per_template": args.per_template,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
    }
    replies_file, replies_args = args.out / "replies.csv", args.out / "replies.json"
    cached = replies_file.exists() and replies_args.exists() and not args.regenerate
    if cached and json.loads(replies_args.read_text(encoding="utf-8")) == written_by:
        rows = pd.read_csv(replies_file, keep_default_na=False)
    else:
        if cached:
            print(f"{replies_file}: written with other arguments or another base; writing it again")
        rows = request_rows(args.per_template, args.seed)
        rows["reply"] = base_replies(args.models[0], rows, args.max_new_tokens)
        with atomic_file(replies_file) as tmp:
            rows.to_csv(tmp, index=False)
        with atomic_file(replies_args) as tmp:
            tmp.write_text(json.dumps(written_by, indent=2) + "\n", encoding="utf-8")

    summary: dict[str, dict[str, float | int]] = {}
    scored = rows.copy()
    for model in args.models:
        guard = Classifier.load(model)
        predictions = guard.predict(rows["reply"].tolist())
        assert isinstance(predictions, list)
        labels = [prediction.label for prediction in predictions]
        key = str(model)
        scored[f"label:{key}"] = labels
        scored[f"p_none:{key}"] = [round(prediction.scores["none"], 4) for prediction in predictions]
        withheld = pd.Series([label != "none" for label in labels], index=rows.index)
        summary[key] = {half: float(withheld[rows["half"] == half].mean()) for half in ("A", "B")}
        summary[key]["replies"] = len(rows)

    with atomic_file(args.out / "scores.csv") as tmp:
        scored.to_csv(tmp, index=False)
    with atomic_file(args.out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    halves = rows["half"].value_counts()
    print(f"{len(rows)} replies ({halves.get('A', 0)} in half A, {halves.get('B', 0)} in B)")
    for key, shares in summary.items():
        print(f"withheld  A {shares['A']:.3f}  B {shares['B']:.3f}  {key}")


if __name__ == "__main__":
    main()
