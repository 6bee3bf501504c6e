"""Per-source results of a moderation guard from `guardtune predict` outputs.

Reads prediction files (the input columns ``label_input``, ``categories``, ``source`` kept, plus
the decided ``label`` and ``score_<label>`` columns), and writes one Markdown table and a JSON
file: per source and pooled, the rows, AUPRC of the unsafe score (where both classes occur), F1
and recall of the unsafe decision, the false-positive rate on safe rows at the model's
threshold, and per-category F1 on the rows whose categories are known.

    python examples/moderation/report.py --split random=preds/test.csv \
        --split held-out=preds/heldout.csv --out runs/moderation/report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, f1_score

OVERALL = "unsafe"


def overall_figures(frame: pd.DataFrame) -> dict[str, Any]:
    """AUPRC, F1, recall and FPR of the overall decision on one group of rows."""
    gold = (frame["label_input"] == OVERALL).to_numpy()
    flagged = frame["label"].str.split(",").map(lambda names: OVERALL in names).to_numpy()
    score = frame[f"score_{OVERALL}"].to_numpy(dtype=float)
    both = gold.any() and not gold.all()
    return {
        "rows": len(frame),
        "unsafe": int(gold.sum()),
        "auprc": float(average_precision_score(gold, score)) if both else None,
        "f1": float(f1_score(gold, flagged, zero_division=0)) if gold.any() else None,
        "recall": float(flagged[gold].mean()) if gold.any() else None,
        "fpr": float(flagged[~gold].mean()) if (~gold).any() else None,
    }


def category_f1(frame: pd.DataFrame) -> dict[str, float]:
    """F1 per category over rows whose categories are known (safe rows, or unsafe with some)."""
    categories = frame["categories"].fillna("")
    gold_unsafe = frame["label_input"] == OVERALL
    known = ~gold_unsafe | (categories != "")
    rows = frame[known]
    names = sorted({c for cell in categories[gold_unsafe & known] for c in cell.split(",") if c})
    result = {}
    for name in names:
        gold = rows["categories"].fillna("").str.split(",").map(lambda cs, n=name: n in cs)
        predicted = rows["label"].str.split(",").map(lambda cs, n=name: n in cs)
        result[name] = float(f1_score(gold, predicted, zero_division=0))
    return result


def _cell(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| split | source | rows | unsafe | AUPRC | F1 | recall | FPR | category F1 (known rows) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for split, groups in results.items():
        for source, figures in groups.items():
            categories = ", ".join(f"{k} {v:.2f}" for k, v in figures["category_f1"].items()) or "-"
            cells = [split, source, str(figures["rows"]), str(figures["unsafe"])]
            cells += [_cell(figures[key]) for key in ("auprc", "f1", "recall", "fpr")]
            lines.append("| " + " | ".join([*cells, categories]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", action="append", required=True, help="NAME=PREDICTIONS_FILE (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md and report.json")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for spec in args.split:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"error: --split {spec!r}: expected NAME=PREDICTIONS_FILE")
        frame = pd.read_csv(path, keep_default_na=False, dtype={"label": str, "categories": str})
        missing = {"label_input", "label", "source", f"score_{OVERALL}"} - set(frame.columns)
        if missing:
            raise SystemExit(
                f"error: {path}: missing columns {sorted(missing)} (expected guardtune predict output)"
            )
        groups = {"all sources": frame} | {s: g for s, g in frame.groupby("source")}
        results[name] = {
            source: overall_figures(group) | {"category_f1": category_f1(group)}
            for source, group in groups.items()
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown = table(results)
    (args.out / "report.md").write_text(markdown + "\n", encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    main()
