"""The task's prompt for servers that do not run guardtune: a chat template and a JSON record.

Methods that read a prompt (``label-tokens``, ``generate``) score or answer it wrapped around the
message. A merged model carries that wrapping as its chat template, so a server's chat or classify
endpoint that takes ``messages`` builds the same prompt guardtune builds, from the last message's
text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from guardtune.methods.prompting import PromptEncoder

if TYPE_CHECKING:
    from guardtune.export.merge import MergedModel

EXPORT_FILE = "guardtune_export.json"
EXPORT_FORMAT_VERSION = 1


def split_bos(prompt: PromptEncoder) -> tuple[bool, str]:
    """Whether the prompt starts with the BOS token, and its text before the message without it."""
    bos = prompt.tokenizer.bos_token
    if bos and prompt.text_before.startswith(bos):
        return True, prompt.text_before[len(bos) :]
    return False, prompt.text_before


def chat_template(prompt: PromptEncoder, with_bos: bool = True) -> str:
    """A Jinja chat template rendering ``prompt`` around the last message's content.

    ``with_bos=False`` leaves the BOS token out, for runtimes that add it themselves (llama.cpp
    does when ``tokenizer.ggml.add_bos_token`` is set); vLLM tokenizes a rendered chat without
    adding special tokens, so a Hugging Face export keeps it. The fixed parts are JSON-quoted,
    which Jinja reads as string literals, so quotes, newlines and braces cannot break the template.
    """
    _, text = split_bos(prompt)
    before = json.dumps(prompt.text_before if with_bos else text)
    after = json.dumps(prompt.text_after)
    return "{{ " + before + " + messages[-1]['content'] + " + after + " }}"


def export_record(merged: MergedModel, label_tokens: list[str] | None = None) -> dict[str, Any]:
    """What ``guardtune_export.json`` says: method, labels, prompt and label tokens."""
    manifest = merged.manifest
    record: dict[str, Any] = {
        "format_version": EXPORT_FORMAT_VERSION,
        "source": str(merged.directory),
        "method": manifest.method,
        "base": manifest.base,
        "task": manifest.task.to_dict(),
        "labels": manifest.task.label_names,
        "mode": manifest.task.mode,
        "max_length": manifest.max_length,
        "versions": manifest.versions,
    }
    prompt = merged.method.prompt
    if prompt is not None:
        has_bos, before = split_bos(prompt)
        record["prompt"] = {
            "bos": has_bos,
            "before": before,
            "after": prompt.text_after,
            "answer_prefix": prompt.answer_prefix,
        }
    if label_tokens is not None:
        record["label_tokens"] = {
            "tokens": label_tokens,
            "token_ids": list(merged.method.classifier_tokens or []),
        }
    return record
