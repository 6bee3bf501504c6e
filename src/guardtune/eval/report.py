"""Human-readable views of a metrics dict: markdown, a rich table, an error listing, report.md."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from guardtune.atomic import atomic_file
from guardtune.errors import GuardtuneError

# Summary rows in display order; extras appear only when the metrics dict has them.
_SUMMARY = [
    ("n", "rows"),
    ("accuracy", "accuracy"),
    ("exact_match", "exact match"),
    ("hamming_loss", "hamming loss"),
    ("micro_f1", "micro F1"),
    ("macro_f1", "macro F1"),
    ("weighted_f1", "weighted F1"),
    ("f1_single_violation", "weighted F1, 1 violation"),
    ("f1_multiple_violations", "weighted F1, 2+ violations"),
    ("fpr", "false-positive rate"),
]
_PER_CLASS = ["precision", "recall", "f1", "support", "auprc"]
_MISSING = "n/a"


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """Summary, per-class and confusion-matrix tables in markdown."""
    parts = ["## Summary", "", *_md_table(["metric", "value"], _summary_rows(metrics)), ""]

    per_class = [
        [label, *(_fmt(values.get(key)) for key in _PER_CLASS)]
        for label, values in metrics["per_class"].items()
    ]
    parts += ["## Per class", "", *_md_table(["label", *_PER_CLASS], per_class), ""]

    cm = metrics["confusion_matrix"]
    labels = [str(label) for label in cm["labels"]]
    matrix = np.asarray(cm["matrix"], dtype=int)
    parts += ["## Confusion matrix", ""]
    if matrix.ndim == 3:
        rows = [[label, *(str(v) for v in m.ravel())] for label, m in zip(labels, matrix, strict=True)]
        parts += _md_table(["label", "tn", "fp", "fn", "tp"], rows)
    else:
        parts.append("Rows are true labels, columns predicted labels.")
        parts.append("")
        rows = [[label, *(str(v) for v in row)] for label, row in zip(labels, matrix, strict=True)]
        parts += _md_table(["true \\ predicted", *labels], rows)
    if metrics.get("groups"):
        parts += ["", *_groups_markdown(metrics["groups"])]
    return "\n".join(parts) + "\n"


def groups_rich_table(groups: dict[str, Any]) -> Table:
    """Per-group metrics (``metrics["groups"]``), weakest group first."""
    header, rows = _group_rows(groups)
    table = Table(*header, title=f"By {groups['column']} (weakest: {groups['weakest']})")
    for row in rows:
        table.add_row(*row)
    return table


def _group_rows(groups: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    per_group = groups["metrics"]
    f1_key = "macro_f1" if any("macro_f1" in m for m in per_group.values()) else "micro_f1"
    rows = [
        [
            name,
            str(m["n"]),
            _fmt(m["accuracy"]),
            _fmt(m.get(f1_key)),
            ", ".join(f"{label} {_fmt(r)}" for label, r in m["recall"].items()) or _MISSING,
            f"{_fmt(m['fpr'])} of {m['n_negative']}" if m["fpr"] is not None else _MISSING,
        ]
        for name, m in sorted(per_group.items(), key=lambda item: item[1]["accuracy"])
    ]
    header = ["group", "rows", "accuracy", f1_key.replace("_", " "), "recall", "false-positive rate"]
    return header, rows


def _groups_markdown(groups: dict[str, Any]) -> list[str]:
    header, rows = _group_rows(groups)
    return [
        f"## By {groups['column']}",
        "",
        f"Weakest first. False-positive rate: rows with nothing to flag that were flagged. "
        f"Weakest: **{groups['weakest']}**.",
        "",
        *_md_table(header, rows),
    ]


def metrics_rich_table(metrics: dict[str, Any], title: str = "") -> Table:
    """Per-class rows, then summary rows (value in the f1 column, as sklearn's report does)."""
    table = Table(title=title or None)
    table.add_column("label", no_wrap=True)
    for key in _PER_CLASS:
        table.add_column(key, justify="right")
    for label, values in metrics["per_class"].items():
        table.add_row(label, *(_fmt(values.get(key)) for key in _PER_CLASS))
    table.add_section()
    for key, name in _SUMMARY:
        if key == "n" or key not in metrics:
            continue
        table.add_row(name, "", "", _fmt(metrics[key]), "", "", style="bold")
    table.add_row("rows", "", "", "", _fmt(metrics.get("n")), "", style="bold")
    return table


def errors_frame(
    texts: list[str],
    y_true: list[Any],
    y_pred: list[Any],
    scores: np.ndarray,
    labels: list[str],
) -> pd.DataFrame:
    """Misclassified rows, most confident mistake first.

    Columns: ``row`` (1-based input position), ``text``, ``true``, ``predicted`` and one
    ``score_<label>`` per label. Multi-label sets (lists) are rendered comma-separated in label
    order, with an empty string for the empty (safe) set.

    Confidence of a wrong single-label prediction is the score of the predicted label. For a
    wrong label set it is the strongest wrong decision: the score of a label predicted but not
    true, or one minus the score of a label true but missed.
    """
    score_matrix = np.asarray(scores, dtype=float)
    shape_ok = score_matrix.ndim == 2 and score_matrix.shape == (len(texts), len(labels))
    if not (shape_ok and len(texts) == len(y_true) == len(y_pred)):
        raise GuardtuneError(
            f"errors_frame: expected {len(texts)} texts, labels, predictions and a "
            f"({len(texts)}, {len(labels)}) score matrix; found {len(y_true)} labels, "
            f"{len(y_pred)} predictions and scores of shape {score_matrix.shape}"
        )
    columns = ["row", "text", "true", "predicted", *(f"score_{label}" for label in labels)]
    index = {label: j for j, label in enumerate(labels)}
    records: list[list[Any]] = []
    confidence: list[float] = []
    for i, (text, truth, pred) in enumerate(zip(texts, y_true, y_pred, strict=True)):
        row_scores = score_matrix[i]
        if isinstance(truth, str):
            if truth == pred:
                continue
            conf = float(row_scores[index[pred]]) if pred in index else float("nan")
            true_text, pred_text = truth, str(pred)
        else:
            true_set, pred_set = set(truth), set(pred)
            if true_set == pred_set:
                continue
            wrong = [row_scores[index[x]] for x in pred_set - true_set if x in index]
            wrong += [1.0 - row_scores[index[x]] for x in true_set - pred_set if x in index]
            conf = float(max(wrong)) if wrong else float("nan")
            true_text, pred_text = _join(true_set, index), _join(pred_set, index)
        records.append([i + 1, text, true_text, pred_text, *row_scores.tolist()])
        confidence.append(conf)
    frame = pd.DataFrame(records, columns=columns)
    if records:
        # Stable sort keeps input order among ties; unknown confidence (NaN) goes last.
        order = pd.Series(confidence).sort_values(ascending=False, kind="mergesort", na_position="last")
        frame = frame.iloc[order.index].reset_index(drop=True)
    return frame


def write_report(
    out_dir: Path,
    metrics: dict[str, Any],
    title: str,
    extra_sections: dict[str, str] | None = None,
    images: list[str] | None = None,
) -> Path:
    """Write ``out_dir/report.md``: title, metrics tables, images, then extra sections.

    Images are embedded by a path relative to ``out_dir`` so the folder can be moved or
    published as a whole.
    """
    out_dir = Path(out_dir)
    parts = [f"# {title}", "", metrics_markdown(metrics)]
    if images:
        parts += ["## Plots", ""]
        for image in images:
            ref = _relative(Path(image), out_dir)
            parts += [f"![{Path(ref).stem}]({ref})", ""]
    for heading, body in (extra_sections or {}).items():
        parts += [f"## {heading}", "", body.rstrip("\n"), ""]
    text = "\n".join(parts).rstrip("\n") + "\n"
    path = out_dir / "report.md"
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _summary_rows(metrics: dict[str, Any]) -> list[list[str]]:
    return [[name, _fmt(metrics[key])] for key, name in _SUMMARY if key in metrics]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        # A pipe inside a label would otherwise split the cell.
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(header) - 1)
    return [line(header), "|" + "|".join(align) + "|", *(line(row) for row in rows)]


def _fmt(value: Any) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return _MISSING if np.isnan(value) else f"{float(value):.3f}"
    return str(value)


def _join(chosen: set[str], index: dict[str, int]) -> str:
    # Labels outside the task keep a stable place after the known ones.
    return ",".join(sorted(chosen, key=lambda x: (index.get(x, len(index)), x)))


def _relative(image: Path, out_dir: Path) -> str:
    # Relative names are taken as already relative to out_dir; absolute paths are made relative.
    if image.is_absolute():
        return Path(os.path.relpath(image, out_dir.resolve())).as_posix()
    return image.as_posix()
