"""``guardtune compare``: train several methods on the same data and tabulate them side by side."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from guardtune.api import Classifier, evaluate, train
from guardtune.atomic import atomic_file
from guardtune.backbone import DEFAULT_BASE, load_backbone
from guardtune.data.readers import load_examples
from guardtune.methods import get_method
from guardtune.methods.base import check_method_settings
from guardtune.task import TaskSpec, load_task
from guardtune.train_settings import TrainSettings


def compare_methods(
    task: str | TaskSpec,
    train_path: str | Path,
    val_path: str | Path,
    test_path: str | Path,
    out: str | Path,
    methods: list[str],
    base: str = DEFAULT_BASE,
    settings: TrainSettings | None = None,
) -> list[dict[str, Any]]:
    """Train each method on one shared base and evaluate it on ``test_path``.

    Writes ``OUT/<method>/`` (model), ``OUT/<method>-report/`` (eval report), and the table as
    ``OUT/compare.md`` and ``OUT/compare.json``.

    Returns:
        One row per method: macro-F1, per-class F1, training examples/s, prediction messages/s.
    """
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    settings = settings or TrainSettings()
    for name in methods:
        # Unknown names and settings a method cannot take fail before any training starts.
        check_method_settings(get_method(name), settings)
    out = Path(out)
    # One base for every method, loaded as `train` would load it (quantised when asked).
    backbone = load_backbone(base, dtype=settings.dtype, device=settings.device, quantize=settings.quantize)
    test_texts = load_examples(test_path, spec).texts
    rows = []
    for name in methods:
        report = train(
            spec,
            train_path,
            out / name,
            val_path=val_path,
            base=base,
            method=name,
            settings=replace(settings),
            overwrite=True,
            backbone=backbone,
        )
        classifier: Classifier = report.classifier
        metrics = evaluate(classifier, test_path, out / f"{name}-report", progress=False)
        started = time.perf_counter()
        classifier.predict_proba(test_texts)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "method": name,
                "macro_f1": metrics["macro_f1"],
                "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
                "train_examples_per_second": round(report.fit.examples_per_second, 2),
                "predict_messages_per_second": round(len(test_texts) / seconds, 1),
                "test_rows": metrics["n"],
            }
        )
    with atomic_file(out / "compare.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    with atomic_file(out / "compare.md") as tmp:
        tmp.write_text(comparison_markdown(rows, spec), encoding="utf-8")
    return rows


def comparison_markdown(rows: list[dict[str, Any]], task: TaskSpec) -> str:
    """The comparison as a Markdown table."""
    labels = task.label_names
    head = ["method", "macro-F1", *(f"F1 {label}" for label in labels), "train ex/s", "predict msg/s"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        cells = [
            row["method"],
            f"{row['macro_f1']:.3f}",
            *(f"{row['per_class_f1'][label]:.3f}" for label in labels),
            f"{row['train_examples_per_second']:.1f}",
            f"{row['predict_messages_per_second']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
