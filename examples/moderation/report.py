"""Per-source results of a moderation guard from `guardtune predict` outputs.

Reads prediction files (the input columns ``label_input``, ``categories``, ``source`` kept, plus
the decided ``label`` and ``score_<label>`` columns), and writes one Markdown table and a JSON
file: per source and pooled, the rows, AUPRC of the unsafe score (where both classes occur), F1
and recall of the unsafe decision, the false-positive rate on safe rows at the model's
threshold, and per-category F1 on the rows whose categories are known.

With ``--hatecheck`` (the data folder's ``hatecheck_test_suite_cases.csv``) it also breaks the
HateCheck rows down by functionality (e.g. counter-speech, negated hate, reclaimed slurs): the
share flagged unsafe and the mean unsafe score of each, as a table and a bar chart
(``hatecheck-<split>.png``). HateCheck's gold labels are known per functionality, so this shows which
kinds of text a guard gets wrong, not only how often.

    python examples/moderation/report.py --split random=preds/test.csv \
        --split held-out=preds/heldout.csv --out runs/moderation/report \
        --hatecheck ../shared/data/moderation/hatecheck_test_suite_cases.csv
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
HATECHECK = "hatecheck"


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


def _slug(name: str) -> str:
    return "-".join(name.lower().split()) or "split"


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


def _match_key(text: str) -> str:
    """A text as the data's build.py compares texts: whitespace collapsed, lower case."""
    return " ".join(text.split()).lower()


def read_functionalities(path: Path) -> dict[str, tuple[str, str]]:
    """HateCheck's test suite file: matching key of each test case -> (functionality, gold label)."""
    suite = pd.read_csv(path, keep_default_na=False, dtype=str)
    missing = {"test_case", "functionality", "label_gold"} - set(suite.columns)
    if missing:
        raise SystemExit(
            f"error: {path}: missing columns {sorted(missing)} (expected HateCheck's test_suite_cases.csv)"
        )
    return {
        _match_key(text): (functionality, gold)
        for text, functionality, gold in zip(
            suite["test_case"], suite["functionality"], suite["label_gold"], strict=True
        )
    }


def functionality_figures(frame: pd.DataFrame, suite: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """Per HateCheck functionality: rows, gold label, share flagged unsafe, mean unsafe score."""
    rows = frame[frame["source"] == HATECHECK]
    found = [suite.get(_match_key(text)) for text in rows["text"]]
    unmatched = sum(entry is None for entry in found)
    if unmatched:
        raise SystemExit(
            f"error: {unmatched} of {len(rows)} HateCheck rows are not in the --hatecheck file "
            "(expected the file the data was built from)"
        )
    figures = pd.DataFrame(
        {
            "functionality": [entry[0] for entry in found if entry],
            "gold": [entry[1] for entry in found if entry],
            "flagged": rows["label"].str.split(",").map(lambda names: OVERALL in names).to_numpy(),
            "score": rows[f"score_{OVERALL}"].to_numpy(dtype=float),
        }
    )
    grouped = figures.groupby(["gold", "functionality"], as_index=False)
    return grouped.agg(rows=("score", "size"), flagged=("flagged", "mean"), mean_score=("score", "mean"))


def functionality_table(split: str, figures: pd.DataFrame) -> str:
    lines = [
        f"HateCheck by functionality ({split}): share flagged unsafe at the model's threshold",
        "",
        "| gold | functionality | rows | flagged | mean unsafe score |",
        "|---|---|---:|---:|---:|",
    ]
    for row in figures.to_dict("records"):
        cells = [
            row["gold"],
            row["functionality"],
            str(row["rows"]),
            f"{row['flagged']:.2f}",
            f"{row['mean_score']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_functionalities(split: str, figures: pd.DataFrame, path: Path) -> None:
    """Horizontal bars: share flagged per functionality, hateful red, non-hateful blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = figures["functionality"].tolist()
    colours = ["tab:red" if gold == "hateful" else "tab:blue" for gold in figures["gold"]]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    ax.barh(names, figures["flagged"], color=colours)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share flagged unsafe (red: hateful, should be 1; blue: non-hateful, should be 0)")
    ax.set_title(f"HateCheck by functionality, {split}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", action="append", required=True, help="NAME=PREDICTIONS_FILE (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md and report.json")
    parser.add_argument(
        "--hatecheck",
        type=Path,
        help="HateCheck's test_suite_cases.csv: break its rows down by functionality",
    )
    args = parser.parse_args()
    suite = read_functionalities(args.hatecheck) if args.hatecheck else None
    results: dict[str, dict[str, Any]] = {}
    breakdowns: dict[str, pd.DataFrame] = {}
    for spec in args.split:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"error: --split {spec!r}: expected NAME=PREDICTIONS_FILE")
        frame = pd.read_csv(path, keep_default_na=False, dtype={"label": str, "categories": str})
        needed = {"label_input", "label", "source", f"score_{OVERALL}"} | ({"text"} if suite else set())
        missing = needed - set(frame.columns)
        if missing:
            raise SystemExit(
                f"error: {path}: missing columns {sorted(missing)} (expected guardtune predict output)"
            )
        groups = {"all sources": frame} | {str(s): g for s, g in frame.groupby("source")}
        results[name] = {
            source: overall_figures(group) | {"category_f1": category_f1(group)}
            for source, group in groups.items()
        }
        if suite is not None and (frame["source"] == HATECHECK).any():
            breakdowns[name] = functionality_figures(frame, suite)
            results[name][HATECHECK]["functionalities"] = breakdowns[name].to_dict("records")
    # Every input is read and checked before anything is written.
    args.out.mkdir(parents=True, exist_ok=True)
    for name, figures in breakdowns.items():
        plot_functionalities(name, figures, args.out / f"hatecheck-{_slug(name)}.png")
    (args.out / "report.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    sections = [functionality_table(name, figures) for name, figures in breakdowns.items()]
    markdown = "\n\n".join([table(results), *sections])
    (args.out / "report.md").write_text(markdown + "\n", encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    main()
