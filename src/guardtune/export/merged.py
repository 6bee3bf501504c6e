"""``--format merged``: a standard Hugging Face model directory other tools load without guardtune.

The method's ``info.merged_as`` says which form it takes:

- ``sequence-classifier`` (``head``): a ``*ForSequenceClassification`` model (the merged decoder
  plus the method's linear head as ``score``), so ``AutoModelForSequenceClassification`` gives
  guardtune's scores.
- ``causal-lm`` (``label-tokens``, ``generate``): the merged causal LM with the method's prompt as
  the chat template; when the scores are a softmax over label-token rows (``label-tokens``), also
  the ``classifier_from_token`` / ``method`` config keys vLLM reads to serve it as a classifier.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from guardtune.atomic import atomic_dir
from guardtune.errors import GuardtuneError
from guardtune.export.card import export_card
from guardtune.export.merge import MergedModel, check_format
from guardtune.export.prompt import EXPORT_FILE, chat_template, export_record
from guardtune.methods.head import HEAD_FILE

# vLLM's name for "the score matrix is the LM head's rows of these tokens, used as they are"
# (vllm/model_executor/models/adapters.py, SEQ_CLS_LOAD_METHODS).
VLLM_FROM_TOKENS_METHOD = "no_post_processing"


def _label_maps(config: Any, labels: list[str]) -> None:
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}


def sequence_classifier(merged: MergedModel) -> PreTrainedModel:
    """The merged decoder and the head as transformers' ``*ForSequenceClassification`` model.

    Raises:
        GuardtuneError: the method has no linear head, the head has a bias (transformers'
            ``score`` has none), or the model family has no sequence-classification class in
            transformers.
    """
    head = merged.method.linear_head()
    if head is None:
        raise GuardtuneError(f"{merged.directory}: the {merged.manifest.method} method has no linear head")
    if head.bias is not None:
        raise GuardtuneError(
            f"{merged.directory / HEAD_FILE}: the head has a bias, which transformers' "
            "ForSequenceClassification 'score' layer cannot hold; retrain the model with this "
            "guardtune version (heads are bias-free now)"
        )
    config = copy.deepcopy(merged.model.config)
    architecture = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    if architecture is None:
        raise GuardtuneError(
            f"--format merged: transformers has no sequence-classification model for "
            f"model_type {config.model_type!r} (base {merged.manifest.base})"
        )
    task = merged.manifest.task
    config.architectures = [architecture]
    _label_maps(config, task.label_names)
    # transformers picks the loss (and pipelines the activation) from problem_type: softmax for
    # one label per text, independent sigmoids for multi-label, as guardtune's head scores.
    config.problem_type = (
        "multi_label_classification" if task.mode == "multi" else "single_label_classification"
    )
    # The classifier pools the last token that is not padding; guardtune pools the last token
    # the attention mask covers. They agree as long as padding uses the tokenizer's pad token.
    config.pad_token_id = merged.tokenizer.pad_token_id
    # Built on the meta device, then given the merged decoder itself: no second copy of the base.
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    setattr(model, model.base_model_prefix, merged.model.get_decoder())
    score = nn.Linear(head.in_features, head.out_features, bias=False, dtype=torch.float32)
    with torch.no_grad():
        score.weight.copy_(head.weight.detach().float().cpu())
    model.score = score
    model.float()
    model.eval()
    return model


def _vllm_keys(merged: MergedModel, config: Any, ids: list[int]) -> list[str]:
    """Add what vLLM's classify conversion reads to ``config``; returns the label tokens."""
    tokens = merged.tokenizer.convert_ids_to_tokens(ids)
    # vLLM maps these strings back with convert_tokens_to_ids, so they must round-trip exactly.
    if merged.tokenizer.convert_tokens_to_ids(tokens) != ids:
        raise GuardtuneError(
            f"{merged.directory}: label tokens {tokens} do not map back to ids {ids} in the tokenizer"
        )
    config.classifier_from_token = tokens
    config.method = VLLM_FROM_TOKENS_METHOD
    _label_maps(config, merged.manifest.task.label_names)
    return tokens


# Texts whose ids the exported tokenizer must give as guardtune's tokenizer does, plus its EOS.
_PROBES = ("whats ur snap?", "hi", "my number is 555 0100, call me", "")


def _append_end_token(folder: Path, tokenizer: Any) -> None:
    """Make the tokenizer saved in ``folder`` append the end-of-sequence token the head reads
    (``--readout eos``), so transformers and vLLM give the classifier what guardtune gives it
    (refused for bases that pad with that token: the classifier would skip it as padding).

    The base's tokenizer stays as it is (guardtune appends the token itself); the copy is read back
    from ``folder``, switched to add EOS (keeping BOS as the base adds it), checked on probe texts,
    and saved over the first.

    Raises:
        GuardtuneError: the tokenizer cannot be made to append exactly the EOS token.
    """
    refusal = GuardtuneError(
        f"--format merged: the {type(tokenizer).__name__} tokenizer cannot be saved to append the "
        "end-of-sequence token the head reads (--readout eos); export a model trained with --readout last"
    )
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        # transformers' classifier reads the last token that is not padding: the appended EOS
        # would be taken for padding, and the token before it read instead.
        raise GuardtuneError(
            "--format merged: the base pads with its end-of-sequence token, which transformers' "
            "sequence classifier skips as padding, so it cannot read the head's --readout eos token; "
            "export a model trained with --readout last"
        )
    copy_ = AutoTokenizer.from_pretrained(folder)
    starts_with_bos = tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    try:
        # transformers rebuilds the post-processor from these two flags (mypy reads the properties
        # as read-only: their setters are declared apart from them).
        copy_.add_bos_token = starts_with_bos  # type: ignore[misc]
        copy_.add_eos_token = True  # type: ignore[misc]
    except AttributeError as exc:
        raise refusal from exc
    for probe in _PROBES:
        if list(copy_(probe)["input_ids"]) != [*tokenizer(probe)["input_ids"], tokenizer.eos_token_id]:
            raise refusal
    copy_.save_pretrained(folder)


def write_merged(merged: MergedModel, out: Path, overwrite: bool = False) -> Path:
    """Write the merged export of ``merged`` to the directory ``out`` (atomically).

    Raises:
        GuardtuneError: ``out`` exists and ``overwrite`` is false, or the model cannot be exported.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise GuardtuneError(f"--out {out}: already exists (pass --overwrite to replace it)")
    method = merged.method
    check_format(merged.directory, type(method), "merged")
    label_tokens: list[str] | None = None
    tokenizer = merged.tokenizer
    if method.info.merged_as == "sequence-classifier":
        model = sequence_classifier(merged)
    else:
        model = merged.model
        if method.classifier_tokens is not None:
            label_tokens = _vllm_keys(merged, model.config, list(method.classifier_tokens))
        if method.prompt is not None:
            tokenizer.chat_template = chat_template(method.prompt)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if method.readout == "eos":
            _append_end_token(tmp, tokenizer)
        record = export_record(merged, label_tokens)
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(export_card(merged, "merged"), encoding="utf-8")
    return out
