"""The model card (``README.md``) every model directory carries, as a model hub page would show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guardtune.eval.report import metrics_markdown


def _counts_table(counts: dict[str, dict[str, int]]) -> str:
    splits = list(counts)
    labels = list(dict.fromkeys(label for split in splits for label in counts[split]))
    lines = ["| label | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for label in labels:
        cells = " | ".join(str(counts[split].get(label, 0)) for split in splits)
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


def model_card_text(manifest: Any, metrics_by_split: dict[str, dict[str, Any]]) -> str:
    """Markdown for a model directory's README from its manifest and evaluation results."""
    task = manifest.task
    training = manifest.training
    lora = manifest.lora
    label_lines = "\n".join(f"- `{name}`: {text}" for name, text in task.labels.items())
    sections = [
        f"# {task.name} classifier ({manifest.method} method on {manifest.base})",
        "Trained with [guardtune](https://pypi.org/project/guardtune/): a LoRA adapter on a frozen "
        "decoder-only language model, used as a text classifier.",
        "## Model\n\n"
        "| | |\n|---|---|\n"
        f"| base model | `{manifest.base}` |\n"
        f"| method | `{manifest.method}` |\n"
        f"| task mode | {task.mode}-label |\n"
        f"| LoRA | r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
        f"targets={', '.join(lora.get('target_modules', []))} |\n"
        f"| max length | {manifest.max_length} tokens |\n"
        f"| dtype | {training.get('dtype', 'auto')} |",
        f"## Labels\n\n{label_lines}",
    ]
    if training:
        sections.append(
            "## Training\n\n"
            f"{training.get('steps')} steps, batch size {training.get('batch_size')}, "
            f"learning rate {training.get('learning_rate')}, seed {training.get('seed')}"
            + (f", label smoothing {training['label_smoothing']}" if training.get("label_smoothing") else "")
            + (f", NEFTune alpha {training['neftune_alpha']}" if training.get("neftune_alpha") else "")
            + (", read at an appended end-of-sequence token" if training.get("readout") == "eos" else "")
            + "; "
            f"{training.get('seconds')} s at {training.get('examples_per_second')} examples/s; "
            f"final training loss {training.get('train_loss')}."
        )
        if training.get("counts"):
            sections.append("### Data (rows per label)\n\n" + _counts_table(training["counts"]))
    for split, metrics in metrics_by_split.items():
        sections.append(f"## Evaluation: {split}\n\n{metrics_markdown(metrics)}")
    sections.append(
        "## How to use\n\n"
        "```bash\n"
        "pip install guardtune\n"
        "guardtune predict --model THIS_DIR --data messages.csv --out predictions.csv\n"
        "guardtune eval --model THIS_DIR --data labelled.csv --out report/\n"
        "```\n\n"
        "```python\n"
        "from guardtune import Classifier\n\n"
        'clf = Classifier.load("THIS_DIR")\n'
        'print(clf.predict("whats ur snap?"))        # label + per-label scores\n'
        'print(clf.predict_proba(["hi", "my number is 555 0134"]))  # (rows, labels) matrix\n'
        "```\n\n"
        "The adapter is a standard PEFT LoRA adapter (`adapter_config.json`, "
        "`adapter_model.safetensors`); the classification head is `head.safetensors`. Nothing in "
        "this directory is pickled."
    )
    sections.append("## Versions\n\n" + ", ".join(f"{k} {v}" for k, v in manifest.versions.items()))
    return "\n\n".join(sections) + "\n"


def write_model_card(directory: Path, manifest: Any, metrics_by_split: dict[str, dict[str, Any]]) -> Path:
    """Write ``README.md`` into ``directory`` (called inside an atomic directory write)."""
    path = Path(directory) / "README.md"
    path.write_text(model_card_text(manifest, metrics_by_split), encoding="utf-8")
    return path
