"""The label-tokens method: its logits are the full LM head's at the label rows; labels
whose first tokens collide are refused."""

import pytest
import torch

from guardtune.backbone import load_backbone
from guardtune.errors import GuardtuneError
from guardtune.methods import LoraSettings, get_method
from guardtune.methods.decoder import pad_batch
from guardtune.task import load_task, task_from_dict

TASK = task_from_dict({**load_task("pii-intent").to_dict(), "template": "{text}\nAnswer:"})


def test_label_tokens_logits_equal_the_full_head_at_those_rows(tiny_base: str) -> None:
    backbone = load_backbone(tiny_base, dtype="fp32")
    method = get_method("label-tokens").create(backbone, TASK, LoraSettings(r=4), 32)
    method.eval()
    batch = pad_batch(
        backbone.tokenizer, method.encode(["whats ur snap", "gg nice game ok"]), backbone.device
    )
    with torch.inference_mode():
        restricted = method.label_logits(**batch)
        full = method.peft_model(**batch).logits  # the causal LM with every vocabulary row
        last = batch["attention_mask"].sum(dim=1) - 1
    expected = full[torch.arange(2), last][:, method.label_ids]
    torch.testing.assert_close(restricted, expected, rtol=1e-5, atol=1e-5)


def test_label_tokens_refuses_labels_with_the_same_first_token(tiny_base: str) -> None:
    backbone = load_backbone(tiny_base, dtype="fp32")
    task = task_from_dict({"name": "clash", "labels": {"game": "", "gamer": ""}, "template": "{text}:"})
    with pytest.raises(GuardtuneError, match="labels 'game' and 'gamer' both start with token"):
        get_method("label-tokens").create(backbone, task, LoraSettings(r=2), 32)
