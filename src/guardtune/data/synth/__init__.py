"""Synthetic messages with gold labels for the built-in PII tasks, generated from template files.

Two tasks are generated:

* ``pii-intent`` (single-label, column ``label``): ``none``, ``asking`` or ``giving``.
* ``pii-categories`` (multi-label, column ``labels``): comma-separated codes ``S1``..``S5`` in
  canonical order (name, IP address, phone, street address, credit card); empty means safe.

Templates and word lists are package data (``templates/<task>/<family>.yaml``, ``templates/words.yaml``):
a family such as "PII words without PII" or "support tickets" is one file, and adding a file adds a
family. Every row carries its ``family``. Each family has a ``train`` and a ``check`` pool that never
share a phrasing, so a model scored on ``check`` rows is tested on sentences its training data never
used, not on new values poured into familiar ones.

Example:
    >>> frame = generate("pii-intent", n=20, seed=0)
    >>> list(frame.columns)
    ['text', 'label', 'family']
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from guardtune.data.synth.compose import Renderer, cycle, dedup_key, quotas, unique
from guardtune.data.synth.families import (
    SPLITS,
    Family,
    load_families,
    synth_tasks,
    template_fields,
    template_frame,
)
from guardtune.errors import GuardtuneError
from guardtune.task import load_task

Split = Literal["train", "check"]
SYNTH_TASKS: tuple[str, ...] = synth_tasks()

__all__ = [
    "SPLITS",
    "SYNTH_TASKS",
    "FamilyShare",
    "Split",
    "describe_families",
    "generate",
    "list_families",
    "min_rows",
    "sample",
    "template_fields",
    "template_frame",
    "template_pools",
]


@dataclass(frozen=True)
class FamilyShare:
    """A family as ``--list-families`` shows it: its share of all rows and of each class."""

    name: str
    description: str
    share: float
    class_shares: dict[str, float]
    templates: dict[str, int]  # split -> number of templates


def list_families(task: str, templates: str | Path | None = None) -> list[FamilyShare]:
    """The families of ``task`` with their expected share of generated rows.

    Args:
        task: ``pii-intent`` or ``pii-categories``.
        templates: a folder of ``<task>/<family>.yaml`` files to use instead of the built-in ones.

    Returns:
        One :class:`FamilyShare` per family file, in file-name order.

    Raises:
        GuardtuneError: unknown task, or a family file that fails its checks.

    Example:
        >>> [f.name for f in list_families("pii-intent")][:2]
        ['assistant-replies', 'assistant-requests']
    """
    families = load_families(task, _root(templates))
    total = sum(sum(f.rows.values()) for f in families.values())
    return [
        FamilyShare(
            name=f.name,
            description=f.description,
            share=sum(f.rows.values()) / total,
            class_shares={cls: share / total for cls, share in f.rows.items() if share > 0},
            templates={split: sum(len(t) for t in f.pools[split].values()) for split in SPLITS},
        )
        for f in families.values()
    ]


def describe_families(task: str, templates: str | Path | None = None, width: int = 78) -> str:
    """``guardtune data synth --list-families``: each family, its shares, template counts and purpose."""
    families = list_families(task, templates)
    lines = [f"{task}: {len(families)} template families (share of rows; templates train / check)"]
    for info in families:
        classes = ", ".join(f"{c} {s:.0%}" for c, s in info.class_shares.items())
        pools = f"{info.templates['train']} / {info.templates['check']}"
        lines += ["", f"{info.name}  {info.share:.0%}  ({classes}; templates {pools})"]
        lines.append(textwrap.indent(textwrap.fill(info.description, width=width - 2), "  "))
    return "\n".join(lines)


def min_rows(task: str, templates: str | Path | None = None) -> int:
    """The smallest ``n`` :func:`generate` takes for ``task``: one row per family.

    Example:
        >>> min_rows("pii-intent")
        8
    """
    return len(load_families(task, _root(templates)))


def sample(task: str, n: int, seed: int, split: Split = "train") -> pd.DataFrame:
    """``n`` rows of :func:`generate`, for any ``n``: below :func:`min_rows` some families give none.

    For benchmarks and smoke tests that want a handful of messages, not a balanced data set.
    """
    return generate(task, max(n, min_rows(task)), seed, split=split).head(n).reset_index(drop=True)


def template_pools(
    task: str, split: Split = "train", family: str | None = None, templates: str | Path | None = None
) -> dict[str, tuple[str, ...]]:
    """The raw template strings one split draws from, by class or pool, over every family (or one).

    Args:
        task: ``pii-intent`` or ``pii-categories``.
        split: ``train`` or ``check``.
        family: one family's pools only (default: every family's, joined).
        templates: a folder of ``<task>/<family>.yaml`` files to use instead of the built-in ones.

    Returns:
        Pool name -> templates. For ``pii-intent`` the keys are the labels; for ``pii-categories``
        ``safe``, ``S1``..``S5``, ``multi`` and ``frames`` (whichever the families have).

    Raises:
        GuardtuneError: unknown task, split or family.

    Example:
        >>> sorted(template_pools("pii-intent", "check"))
        ['asking', 'giving', 'none']
    """
    _check_split(split)
    pools: dict[str, tuple[str, ...]] = {}
    for f in _select(task, [family] if family else None, _root(templates)):
        for key, pool in f.pools[split].items():
            pools[key] = pools.get(key, ()) + pool
    return pools


def generate(
    task: str,
    n: int,
    seed: int,
    split: Split = "train",
    families: Sequence[str] | None = None,
    templates: str | Path | None = None,
) -> pd.DataFrame:
    """Generate ``n`` synthetic messages with gold labels and their family for a built-in PII task.

    Args:
        task: ``pii-intent`` (columns ``text,label,family``) or ``pii-categories`` (``text,labels,family``).
        n: number of rows; at least the number of families drawn from, so each gives a row.
        seed: seeds the random stream and Faker; the same arguments give the same frame.
        split: ``train`` or ``check``; ``check`` uses templates ``train`` never uses.
        families: only these families (default: all); see :func:`list_families`.
        templates: a folder of ``<task>/<family>.yaml`` files to use instead of the built-in ones
            (same format; placeholders are the built-in ones).

    Returns:
        A DataFrame of exactly ``n`` rows, classes and families in the shares the family files give.

    Raises:
        GuardtuneError: unknown task, split or family; ``n`` below the number of families.

    Example:
        >>> generate("pii-categories", n=10, seed=1).columns.tolist()
        ['text', 'labels', 'family']
    """
    chosen = _select(task, families, _root(templates))
    _check_split(split)
    if isinstance(n, bool) or not isinstance(n, int) or n < len(chosen):
        raise GuardtuneError(
            f"n: expected a whole number of rows >= {len(chosen)} (one per family: "
            f"{', '.join(f.name for f in chosen)}), found {n!r}"
        )
    renderer = Renderer(seed)
    plan = _plan(n, chosen, renderer)
    if load_task(task).mode == "single":
        return _single_label_rows(plan, split, renderer, load_families(task, _root(templates)))
    return _multi_label_rows(task, plan, split, renderer)


def _root(templates: str | Path | None) -> Path | None:
    return Path(templates).expanduser().resolve() if templates is not None else None


def _select(task: str, names: Sequence[str] | None, root: Path | None) -> list[Family]:
    families = load_families(task, root)
    if names is None:
        return list(families.values())
    unknown = [name for name in names if name not in families]
    if unknown or not names:
        raise GuardtuneError(
            f"family: unknown {task} family {', '.join(map(repr, unknown)) or '(none given)'} "
            f"(known: {', '.join(families)})"
        )
    return [families[name] for name in dict.fromkeys(names)]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise GuardtuneError(f"split: expected one of {', '.join(SPLITS)}, found {split!r}")


def _plan(n: int, chosen: list[Family], renderer: Renderer) -> list[tuple[Family, str]]:
    """(family, class) for every row, shuffled: families by their total share, classes within."""
    per_family = quotas(n, {f.name: sum(f.rows.values()) for f in chosen})
    plan = [
        (family, cls)
        for family in chosen
        for cls, count in quotas(per_family[family.name], family.rows).items()
        for _ in range(count)
    ]
    renderer.rng.shuffle(plan)
    return plan


def _single_label_rows(
    plan: list[tuple[Family, str]], split: str, renderer: Renderer, families: dict[str, Family]
) -> pd.DataFrame:
    # Context lines join training rows only: the check set stays one fixed measure of phrasings.
    context_lines = {
        f.name: families[f.context_from or f.name].pools["train"]["none"]
        if split == "train" and f.context > 0
        else ()
        for f, _ in plan
    }
    seen: set[str] = set()
    rows = []
    for family, label in plan:
        text = unique(
            lambda: renderer.single(family, split, label, context_lines[family.name]),  # noqa: B023
            dedup_key,
            seen,
            family.unique,
        )
        rows.append({"text": text, "label": label, "family": family.name})
    return pd.DataFrame(rows, columns=["text", "label", "family"])


def _multi_label_rows(
    task: str, plan: list[tuple[Family, str]], split: str, renderer: Renderer
) -> pd.DataFrame:
    codes = tuple(load_task(task).label_names)
    # Cycle through the categories per family so single-category rows stay balanced across S1..S5.
    singles = {family.name: cycle(codes, renderer.rng) for family, _ in plan}
    seen: set[str] = set()
    rows = []
    for family, group in plan:
        single = next(singles[family.name]) if group == "one" else ""
        text, labels = unique(
            lambda: renderer.composed(family, split, group, single, codes),  # noqa: B023
            lambda item: dedup_key(item[0]),
            seen,
            family.unique,
        )
        rows.append({"text": text, "labels": labels, "family": family.name})
    return pd.DataFrame(rows, columns=["text", "labels", "family"])
