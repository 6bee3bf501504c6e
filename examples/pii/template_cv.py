"""Choose PII training settings without looking at the check set: validate on held-out train templates.

The check templates are the honest test of a PII guard, so nothing may be tuned on them. This script
makes a validation set of the same kind from the *training* templates alone: it copies the built-in
family files, moves a share of every family's train templates into the copy's ``check`` pool (the
real check templates are dropped), trains on rows from the remaining train templates exactly as the
quickstart does, and scores rows from the moved templates, per family. Settings are compared on
these figures; the chosen ones are then measured once on the real check set.

Held-out training templates share the training templates' author and style, so a second dev source
helps: ``--also FILE`` (repeatable) scores every trained model on labelled rows written apart from the
generator as well, such as ``examples/pii/styledev.csv`` (480 chat messages each written on its
own, not from a template, in styles the templates rarely use; columns ``text``, ``label``, ``family``).

    python examples/pii/template_cv.py --task pii-intent --out runs/pii-cv \
        --setting baseline: --setting steps150:max_steps=150 --setting lr1e-3:learning_rate=1e-3

Each ``--setting NAME:key=value,...`` overrides the quickstart's TrainSettings (``max_steps``,
``learning_rate``, ``batch_size``, ``max_length``, ``label_smoothing``, ``neftune_alpha``,
``readout``, ``lora_r``, ``lora_dropout``); ``calibrate=1`` also fits the
calibration on the validation rows, as ``guardtune calibrate`` does, and scores the dev rows again
with it. Results go to ``OUT/results.jsonl`` (one line per setting and seed) and a table on the
terminal.

    python examples/pii/template_cv.py --task pii-intent --out runs/pii-cv --seeds 0,1,2 \
        --also examples/pii/styledev.csv --setting baseline: --setting r8:lora_r=8
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections import Counter
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from guardtune.api import calibrate, evaluate, train
from guardtune.backbone import load_backbone
from guardtune.data.synth.families import phrasing_key, template_frame
from guardtune.errors import GuardtuneError
from guardtune.quickstart import quickstart_settings, write_data
from guardtune.train import TrainSettings

OPTIONAL_POOLS = ("multi", "frames")
_SETTING_TYPES = {
    "max_steps": int,
    "batch_size": int,
    "max_length": int,
    "learning_rate": float,
    "label_smoothing": float,
    "lora_r": int,
    "lora_dropout": float,
    "neftune_alpha": float,
    "readout": str,
    "calibrate": int,  # 1: fit temperature and (multi-label) max-F1 thresholds on the validation rows
}


def parse_setting(spec: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` -> (name, overrides); an unknown key stops with its name."""
    name, _, rest = spec.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in _SETTING_TYPES:
            raise GuardtuneError(
                f"--setting {spec}: unknown key {key!r} (known: {', '.join(_SETTING_TYPES)})"
            )
        try:
            overrides[key] = _SETTING_TYPES[key](value)
        except ValueError:
            raise GuardtuneError(f"--setting {spec}: {key}: expected a number, found {value!r}") from None
    return name or "baseline", overrides


def settings_for(task: str, overrides: dict[str, Any], seed: int) -> TrainSettings:
    """The quickstart's training settings for ``task`` with ``overrides``."""
    values = {k: v for k, v in overrides.items() if k != "calibrate" and not k.startswith("lora_")}
    settings = replace(quickstart_settings(task, seed), **values)
    lora = settings.lora
    if "lora_r" in overrides:
        lora = replace(lora, r=overrides["lora_r"], alpha=2 * overrides["lora_r"])
    if "lora_dropout" in overrides:
        lora = replace(lora, dropout=overrides["lora_dropout"])
    return replace(settings, lora=lora)


def _frames_shared_across_pools(pools: dict[str, list[str]]) -> bool:
    frames = [{template_frame(t) for t in pool} for pool in pools.values()]
    return any(a & b for i, a in enumerate(frames) for b in frames[i + 1 :])


def split_templates(
    task: str,
    root: Path,
    dev_share: float,
    seed: int,
    source_root: Path | None = None,
    extra_root: Path | None = None,
) -> Path:
    """Copy the built-in family files of ``task`` with ``dev_share`` of each train pool as ``check``.

    ``extra_root/<task>/<family>.yaml`` files (a ``train`` mapping only) add training templates after
    the split, so a candidate set of new templates is judged on the same validation templates as the
    set without it.
    """
    built_in = Path(str(resources.files("guardtune.data.synth").joinpath("templates")))
    source = (source_root or built_in) / task
    target = root / "templates" / task
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    rng = random.Random(seed)
    files = sorted(source.glob("*.yaml"))
    for rules in (p for p in files if p.name.startswith("_")):
        # Task rules such as _task.yaml are not families: copied as they are.
        shutil.copy(rules, target / rules.name)
    specs = {
        p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in files if not p.name.startswith("_")
    }
    for spec in specs.values():
        pools = spec["train"]
        if _frames_shared_across_pools(pools):
            # Minimal-pair families reuse one sentence for every value: hold out whole sentences.
            frames = sorted({template_frame(t) for pool in pools.values() for t in pool})
            dev_frames = set(rng.sample(frames, max(1, round(len(frames) * dev_share))))
            spec["check"] = {c: [t for t in p if template_frame(t) in dev_frames] for c, p in pools.items()}
            spec["train"] = {
                c: [t for t in p if template_frame(t) not in dev_frames] for c, p in pools.items()
            }
            continue
        shuffled = {cls: rng.sample(pool, len(pool)) for cls, pool in pools.items()}
        n_dev = {cls: max(1, round(len(pool) * dev_share)) for cls, pool in shuffled.items()}
        spec["check"] = {cls: pool[: n_dev[cls]] for cls, pool in shuffled.items()}
        spec["train"] = {cls: pool[n_dev[cls] :] or pool[:1] for cls, pool in shuffled.items()}
    for name, extra in _extra_templates(task, extra_root).items():
        if name not in specs:
            raise GuardtuneError(f"{extra_root}/{task}/{name}: no built-in family of that name")
        for cls, pool in extra.items():
            specs[name]["train"].setdefault(cls, []).extend(pool)
    # A validation template must not share its phrasing with a training template of any family.
    trained = Counter(
        phrasing_key(t) for spec in specs.values() for pool in spec["train"].values() for t in pool
    )
    for name, spec in specs.items():
        for cls, pool in list(spec["check"].items()):
            spec["check"][cls] = [t for t in pool if trained[phrasing_key(t)] == 0]
            if not spec["check"][cls] and cls in OPTIONAL_POOLS:
                # Multi-category rows are then joined from single-category clauses, in both splits.
                del spec["check"][cls], spec["train"][cls]
            elif not spec["check"][cls]:
                # Move a training template whose phrasing no other template shares.
                movable = [t for t in spec["train"][cls] if trained[phrasing_key(t)] == 1]
                if not movable or len(spec["train"][cls]) < 2:
                    raise GuardtuneError(f"{name}: train.{cls}: too few templates to hold one out")
                spec["train"][cls].remove(movable[0])
                spec["check"][cls] = [movable[0]]
        text = yaml.safe_dump(spec, allow_unicode=True, sort_keys=False)
        (target / name).write_text(text, encoding="utf-8")
    return root / "templates"


def _extra_templates(task: str, extra_root: Path | None) -> dict[str, dict[str, list[str]]]:
    if extra_root is None:
        return {}
    extras = {}
    for path in sorted((extra_root / task).glob("*.yaml")):
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(spec.get("train"), dict):
            raise GuardtuneError(f"{path}: key 'train': expected a mapping of label to templates")
        extras[path.name] = spec["train"]
    return extras


def run(
    task: str,
    name: str,
    overrides: dict[str, Any],
    seed: int,
    out: Path,
    backbone: Any,
    source: Path | None = None,
    extra: Path | None = None,
    also: list[Path] | None = None,
) -> dict[str, Any]:
    work = out / name / f"seed{seed}"
    templates = split_templates(task, work, dev_share=0.25, seed=seed, source_root=source, extra_root=extra)
    # The quickstart's own data, with the held-out training templates as its check set.
    paths = write_data(task, work / "data", seed, templates=templates)
    train_path, val_path, dev_path = paths["train"], paths["val"], paths["check"]
    started = time.perf_counter()
    report = train(
        task,
        train_path,
        out / name / f"seed{seed}" / "model",
        val_path=val_path,
        settings=settings_for(task, overrides, seed),
        overwrite=True,
        backbone=backbone,
    )
    minutes = (time.perf_counter() - started) / 60
    dev_dir = out / name / f"seed{seed}" / "dev"
    result = {
        "task": task,
        "setting": name,
        "overrides": overrides,
        "seed": seed,
        "train_minutes": round(minutes, 2),
        **dev_figures(evaluate(report.classifier, dev_path, dev_dir, progress=False)),
    }
    if overrides.get("calibrate"):
        calibrate(report.classifier, val_path, progress=False)
        calibrated = evaluate(
            report.classifier, dev_path, dev_dir.with_name("dev-calibrated"), progress=False
        )
        result["calibrated"] = dev_figures(calibrated)
    # With calibrate=1 the model is calibrated by now: these are figures like the dev rows' "calibrated".
    for path in also or []:
        metrics = evaluate(report.classifier, path, dev_dir.with_name(f"also-{path.stem}"), progress=False)
        result.setdefault("also", {})[path.name] = dev_figures(metrics)
    return result


def dev_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    groups = metrics.get("groups", {}).get("metrics", {})  # files without a family column have none
    return {
        "dev_macro_f1": metrics["macro_f1"],
        "dev_micro_f1": metrics["micro_f1"],
        "dev_fpr": metrics.get("fpr"),
        "family_accuracy": {g: m["accuracy"] for g, m in groups.items()},
        "family_fpr": {g: m["fpr"] for g, m in groups.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="pii-intent", choices=["pii-intent", "pii-categories"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--setting", action="append", default=[], help="NAME:key=value,... (repeatable)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--base", default="gemma-3-270m")
    parser.add_argument(
        "--templates", type=Path, help="a folder of <task>/<family>.yaml to split instead of the built-in one"
    )
    parser.add_argument(
        "--add-train",
        type=Path,
        help="a folder of <task>/<family>.yaml whose train templates join the training pools after the split",
    )
    parser.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        help="labelled rows written apart from the generator, scored as a second dev source (repeatable)",
    )
    args = parser.parse_args()
    for path in args.also:
        if not path.is_file():
            parser.error(f"--also {path}: no such file")
    if len({path.name for path in args.also}) < len(args.also):
        parser.error("--also: two files of one name; their figures are kept by file name")
    settings = [parse_setting(spec) for spec in args.setting or ["baseline:"]]
    seeds = [int(s) for s in args.seeds.split(",")]
    backbone = load_backbone(args.base)
    console = Console()
    results = []
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "results.jsonl").open("a", encoding="utf-8") as log:
        for name, overrides in settings:
            for seed in seeds:
                result = run(
                    args.task,
                    name,
                    overrides,
                    seed,
                    args.out,
                    backbone,
                    source=args.templates,
                    extra=args.add_train,
                    also=args.also,
                )
                log.write(json.dumps(result) + "\n")
                log.flush()
                results.append(result)
                console.print(result)
    also_columns = [f"{path.name} macro-F1" for path in args.also]
    table = Table(
        "setting", "seed", "minutes", "dev macro-F1", "dev micro-F1", *also_columns, "weakest family"
    )
    for r in results:
        weakest = min(r["family_accuracy"], key=r["family_accuracy"].get)
        table.add_row(
            r["setting"],
            str(r["seed"]),
            f"{r['train_minutes']:.1f}",
            f"{r['dev_macro_f1']:.3f}",
            f"{r['dev_micro_f1']:.3f}",
            *(f"{r['also'][path.name]['dev_macro_f1']:.3f}" for path in args.also),
            f"{weakest} {r['family_accuracy'][weakest]:.3f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
