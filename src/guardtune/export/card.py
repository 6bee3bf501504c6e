"""The model card (``README.md``) of an exported model: what it is and how other tools run it."""

from __future__ import annotations

from typing import Any

USAGE = {
    "head": (
        "```python\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        'tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")\n'
        'model = AutoModelForSequenceClassification.from_pretrained("THIS_DIR")\n'
        'batch = tokenizer(["whats ur snap?"], return_tensors="pt", padding=True)\n'
        "logits = model(**batch).logits\n"
        "{activation}\n"
        "```\n\n"
        "The message is scored as it is, with no prompt around it."
    ),
    "label-tokens": (
        "The merged causal LM scores the prompt in `guardtune_export.json` (also the chat "
        "template): each label's score is the softmax over the label tokens' logits at the last "
        "prompt token. `config.json` carries `classifier_from_token` and `method` so vLLM serves "
        "it as a classifier:\n\n"
        "```bash\n"
        "vllm serve THIS_DIR --runner pooling --convert classify\n"
        "curl localhost:8000/classify -H 'Content-Type: application/json' \\\n"
        '  -d \'{"model": "THIS_DIR", "messages": [{"role": "user", "content": "whats ur snap?"}]}\'\n'
        "```"
    ),
    "generate": (
        "The merged causal LM answers the prompt in `guardtune_export.json` (also the chat "
        "template) with the label text (multi-label: `safe`, or `unsafe` and the category codes "
        "on the next line). Greedy decoding of a few tokens is enough."
    ),
}


def export_card(merged: Any, fmt: str) -> str:
    """Markdown for the README of a merged export."""
    manifest = merged.manifest
    task = manifest.task
    activation = (
        "probabilities = logits.sigmoid()  # multi-label: one independent score per label"
        if task.mode == "multi"
        else "probabilities = logits.softmax(-1)"
    )
    labels = "\n".join(f"- `{name}`: {text}" for name, text in task.labels.items())
    lora = manifest.lora
    sections = [
        f"# {task.name} classifier ({manifest.method} method on {manifest.base}), merged",
        "Exported by [guardtune](https://pypi.org/project/guardtune/) "
        f"(`guardtune export --format {fmt}`) from `{merged.directory}`: the LoRA adapter "
        f"(r={lora.get('r')}, alpha={lora.get('alpha')}) merged into the base weights in fp32, "
        "saved as a standard Hugging Face model directory (safetensors; nothing is pickled).",
        f"## Labels ({task.mode}-label)\n\n{labels}",
        "## How to use\n\n" + USAGE[manifest.method].replace("{activation}", activation),
        "`guardtune_export.json` records the task, the labels, the prompt and the versions this "
        "export was made with. guardtune's thresholds and calibration are not applied by other "
        "tools: apply the `task` policy from that file (when it has one) to the scores when you "
        "need the same decisions.",
        "## Versions\n\n" + ", ".join(f"{k} {v}" for k, v in manifest.versions.items()),
    ]
    return "\n\n".join(sections) + "\n"
