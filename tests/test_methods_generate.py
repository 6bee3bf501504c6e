"""The generate method: constrained decoding gives only valid answers, in the task's order;
multi-label answers are learned."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from guardtune.api import train
from guardtune.backbone import load_backbone
from guardtune.methods import LoraSettings, get_method
from guardtune.methods.decoder import pad_batch
from guardtune.task import load_task, task_from_dict
from guardtune.train import TrainSettings


def test_generate_decodes_only_valid_answers_in_canonical_order(tiny_base: str, tmp_path: Path) -> None:
    task = load_task("pii-categories")
    backbone = load_backbone(tiny_base, dtype="fp32")
    method = get_method("generate").create(backbone, task, LoraSettings(r=4), 400)
    valid = {answer.text for answer in method.answers}
    assert len(valid) == 2**5  # safe + every non-empty subset of S1..S5 in task order
    assert "unsafe\nS1,S3" in valid and "unsafe\nS3,S1" not in valid
    texts = ["my name is bob and call me", "gg", "nice map 12", "where do u live", "ok"] * 2
    # Random LoRA weights push the untrained model towards arbitrary tokens; the trie still holds.
    with torch.no_grad():
        for name, parameter in method.peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    answers = method.generate_answers(texts)
    assert all(answer in valid for answer in answers)
    for answer in answers:
        if answer != "safe":
            codes = answer.split("\n")[1].split(",")
            assert codes == sorted(codes, key=task.label_names.index)
    scores = method.scores(**pad_batch(backbone.tokenizer, method.encode(texts), backbone.device))
    assert scores.shape == (10, 5) and bool(((scores >= 0) & (scores <= 1)).all())


def test_generate_learns_multi_label_answers(tiny_base: str, tmp_path: Path) -> None:
    task = task_from_dict(
        {
            "name": "two",
            "mode": "multi",
            "labels": {"S1": "game", "S2": "email"},
            "template": "{text}\nAnswer:",
        }
    )
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(160):
        codes = [c for c in ("S1", "S2") if rng.random() < 0.5]
        words = (["game", "score"] if "S1" in codes else []) + (["email", "mail"] if "S2" in codes else [])
        rows.append({"text": " ".join([*words, "ok"]), "labels": ",".join(codes)})
    path = tmp_path / "multi.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    settings = TrainSettings(epochs=6, batch_size=16, learning_rate=3e-3, max_length=48, seed=1, dtype="fp32")
    report = train(
        task, path, tmp_path / "model", val_path=path, base=tiny_base, method="generate", settings=settings
    )
    method = report.classifier.method
    assert method.generate_answers(["game score ok", "email mail ok", "game score email mail ok", "ok"]) == [
        "unsafe\nS1",
        "unsafe\nS2",
        "unsafe\nS1,S2",
        "safe",
    ]
    predicted = report.classifier.predict(
        ["game score ok", "email mail ok", "game score email mail ok", "ok"]
    )
    assert [p.label for p in predicted] == [["S1"], ["S2"], ["S1", "S2"], []]
