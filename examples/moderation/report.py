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

It also checks the guard's targets (see TARGETS) on the held-out split (``--held-out-split``) and
the random split (``--random-split``), and writes them first in ``report.md`` and to
``targets.json``: each figure, its goal, whether it is met and by how much it misses.

    python examples/moderation/report.py --split random=preds/test.csv \
        --split held-out=preds/heldout.csv --out runs/moderation/report \
        --held-out-split held-out --random-split random \
        --hatecheck ../shared/data/moderation/hatecheck_test_suite_cases.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, f1_score

from guardtune.atomic import atomic_dir

OVERALL = "unsafe"
HATECHECK = "hatecheck"
ALL = "all sources"
BENIGN = "benign sources"  # the sources of a split with no unsafe row (GSM8K, self-instruct)
HELD_OUT = "held-out"
RANDOM = "random"


class Target(NamedTuple):
    """A figure the guard must reach: on which split and rows, which figure, the goal."""

    name: str
    split: str  # HELD_OUT or RANDOM: which --*-split it is read from
    rows: str  # a source, ALL, or BENIGN (the worst of the all-safe sources)
    figure: str  # a key of overall_figures
    goal: float
    higher_is_better: bool


# Issue 17's targets for the moderation guard. FPR and recall are at the model's threshold, which
# run.sh calibrates on the validation split.
TARGETS = [
    Target("pooled held-out AUPRC", HELD_OUT, ALL, "auprc", 0.85, True),
    Target("benign held-out FPR (worst source)", HELD_OUT, BENIGN, "fpr", 0.05, False),
    Target("PAIR jailbreak recall", HELD_OUT, "jbb_pair_jailbreaks", "recall", 0.70, True),
    Target("HateCheck FPR", HELD_OUT, "hatecheck", "fpr", 0.30, False),
    Target("ConvAbuse AUPRC", HELD_OUT, "convabuse", "auprc", 0.80, True),
    Target("phtest_harmless FPR (random test split)", RANDOM, "phtest_harmless", "fpr", 0.10, False),
]


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


def check_targets(
    results: dict[str, dict[str, Any]], split_names: dict[str, str], targets: list[Target] = TARGETS
) -> list[dict[str, Any]]:
    """Each target's measured figure, whether it is met and its gap (figure - goal).

    ``split_names`` maps HELD_OUT / RANDOM to the --split names. A figure that cannot be measured
    (its split or source absent, or one class only) is None, and so are its ``met`` and ``gap``.
    """
    checked = []
    for target in targets:
        groups = results.get(split_names[target.split], {})
        detail = ""
        if target.rows == BENIGN:
            benign = {
                source: figures[target.figure]
                for source, figures in groups.items()
                if source != ALL and figures["unsafe"] == 0 and figures[target.figure] is not None
            }
            value = max(benign.values()) if benign else None
            detail = ", ".join(f"{source} {fpr:.3f}" for source, fpr in sorted(benign.items()))
        else:
            value = groups[target.rows][target.figure] if target.rows in groups else None
        gap = None if value is None else value - target.goal
        met = None if gap is None else (gap >= 0 if target.higher_is_better else gap <= 0)
        goal = f"{'>=' if target.higher_is_better else '<='} {target.goal:.2f}"
        checked.append(
            {"target": target.name, "goal": goal, "value": value, "met": met, "gap": gap, "detail": detail}
        )
    return checked


def targets_table(checked: list[dict[str, Any]]) -> str:
    lines = ["| target | goal | measured | met | gap | per source |", "|---|---|---:|---|---:|---|"]
    for row in checked:
        met = "-" if row["met"] is None else ("yes" if row["met"] else "**no**")
        gap = "-" if row["gap"] is None else f"{row['gap']:+.3f}"
        cells = [row["target"], row["goal"], _cell(row["value"]), met, gap, row["detail"] or "-"]
        lines.append("| " + " | ".join(cells) + " |")
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
    parser.add_argument(
        "--held-out-split", default="held-out sources", help="the --split of held-out sources (targets)"
    )
    parser.add_argument(
        "--random-split", default="random split", help="the --split of the random test split (targets)"
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
        groups = {ALL: frame} | {str(s): g for s, g in frame.groupby("source")}
        results[name] = {
            source: overall_figures(group) | {"category_f1": category_f1(group)}
            for source, group in groups.items()
        }
        if suite is not None and (frame["source"] == HATECHECK).any():
            breakdowns[name] = functionality_figures(frame, suite)
            results[name][HATECHECK]["functionalities"] = breakdowns[name].to_dict("records")
    checked = check_targets(results, {HELD_OUT: args.held_out_split, RANDOM: args.random_split})
    sections = [functionality_table(name, figures) for name, figures in breakdowns.items()]
    markdown = "\n\n".join([targets_table(checked), table(results), *sections])
    # Every input is read and checked before anything is written, and the folder appears whole.
    with atomic_dir(args.out, overwrite=True) as tmp:
        for name, figures in breakdowns.items():
            plot_functionalities(name, figures, tmp / f"hatecheck-{_slug(name)}.png")
        (tmp / "report.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (tmp / "targets.json").write_text(json.dumps(checked, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(markdown + "\n", encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    main()
