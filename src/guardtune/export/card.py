"""The model card (``README.md``) of an exported model: what it is and how other tools run it."""

from __future__ import annotations

from guardtune.export.merge import MergedModel


def export_card(merged: MergedModel, fmt: str) -> str:
    """Markdown for the README of a merged export; "How to use" is the method's ``info.card_usage``."""
    manifest = merged.manifest
    task = manifest.task
    activation = (
        "probabilities = logits.sigmoid()  # multi-label: one independent score per label"
        if task.mode == "multi"
        else "probabilities = logits.softmax(-1)"
    )
    labels = "\n".join(f"- `{name}`: {text}" for name, text in task.labels.items())
    lora = manifest.lora
    usage = merged.method.info.card_usage.replace("{activation}", activation)
    if merged.method.readout == "eos":
        usage += (
            "\n\nThe classifier reads an end-of-sequence token after the message (`--readout eos`): "
            "this tokenizer appends it, so call it with its special tokens (the default)."
        )
    sections = [
        f"# {task.name} classifier ({manifest.method} method on {manifest.base}), merged",
        "Exported by [guardtune](https://pypi.org/project/guardtune/) "
        f"(`guardtune export --format {fmt}`) from `{merged.directory}`: the LoRA adapter "
        f"(r={lora.get('r')}, alpha={lora.get('alpha')}) merged into the base weights in fp32, "
        "saved as a standard Hugging Face model directory (safetensors; nothing is pickled).",
        f"## Labels ({task.mode}-label)\n\n{labels}",
        "## How to use\n\n" + usage,
        "`guardtune_export.json` records the task, the labels, the prompt and the versions this "
        "export was made with. guardtune's thresholds and calibration are not applied by other "
        "tools: apply the `task` policy from that file (when it has one) to the scores when you "
        "need the same decisions.",
        "## Versions\n\n" + ", ".join(f"{k} {v}" for k, v in manifest.versions.items()),
    ]
    return "\n\n".join(sections) + "\n"
