"""``guardtune quickstart``: the main job end to end on the embedded base model.

Synthetic PII data -> a LoRA ``head`` classifier (``pii-intent``: none / asking / giving; or
``pii-categories``: name, IP, phone, address, card) -> evaluation on a held-out split and on a check
set written from templates the training generator never uses, per template family (greetings, PII
words without PII, obfuscated giving, business text, ...).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from guardtune.api import Classifier, evaluate, train
from guardtune.atomic import atomic_file
from guardtune.backbone import load_backbone
from guardtune.data.splits import stratified_split
from guardtune.data.synth import SYNTH_TASKS, generate
from guardtune.data.writers import write_table
from guardtune.errors import GuardtuneError
from guardtune.eval import groups_rich_table, metrics_rich_table
from guardtune.eval.model_card import model_card_text
from guardtune.train_settings import TrainSettings

# Optimizer steps of 16 rows. pii-categories reads longer, multi-line text and five labels: on
# held-out training templates (examples/pii/template_cv.py) 240 steps reached micro-F1 0.945
# where 120 reached 0.874; for pii-intent 120 steps did as well as 150.
DEFAULT_STEPS = {"pii-intent": 120, "pii-categories": 240}
# Label smoothing of the training loss, chosen on held-out training templates like the steps:
# for pii-intent 0.1 led on 9 of 12 seeds (dev macro-F1 0.957 against 0.951, about 1.4 standard
# errors; 0.2 was no better); on the check set, read after, 3 seeds gave 0.937 against 0.948
# without it (docs/data.md). pii-categories was not measured with it.
DEFAULT_LABEL_SMOOTHING = {"pii-intent": 0.1, "pii-categories": 0.0}
# Where the head reads the decoder, chosen the same way: for pii-intent an appended
# end-of-sequence token led on 9 of 12 seeds (dev macro-F1 0.954 against 0.950, about 2.4
# standard errors; docs/data.md). pii-categories was not measured with it.
DEFAULT_READOUT = {"pii-intent": "eos", "pii-categories": "last"}
N_GENERATED = 2400
N_CHECK = 600
EXAMPLES = {
    "pii-intent": ["whats ur snap?", "my email is bob@example.com", "this game is so fun", "hiii"],
    "pii-categories": [
        "call me on 555-201-7734",
        "Ticket 4411: please ship the charger to 12 Elm Road, Leeds LS6 2AB",
        "my email is jane.miller@gmail.com and my IBAN is DE89 3704 0044 0532 0130 00",
    ],
}


def write_data(task: str, data_dir: Path, seed: int, templates: Path | None = None) -> dict[str, Path]:
    """The quickstart's data files: ``train``, ``val``, ``test`` (80/10/10) and ``check``.

    ``templates`` replaces the built-in template folder (``examples/pii/template_cv.py`` passes one
    whose check pools are held-out training templates).
    """
    frame = generate(task, N_GENERATED, seed=seed, templates=templates)
    label_column = frame.columns[1]
    train_idx, val_idx, test_idx = stratified_split(frame[label_column].tolist(), (0.8, 0.1, 0.1), seed)
    paths = {}
    for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        paths[name] = write_table(frame.iloc[idx].reset_index(drop=True), data_dir / f"{name}.csv")
    # The check set comes from a disjoint template pool: a test of phrasings never trained on.
    check = generate(task, N_CHECK, seed=seed + 1, split="check", templates=templates)
    paths["check"] = write_table(check, data_dir / "check.csv")
    return paths


def quickstart_settings(task: str, seed: int = 0, max_steps: int | None = None) -> TrainSettings:
    """The quickstart's training settings for ``task``: batches of 16, the task's steps, smoothing
    and readout."""
    return TrainSettings(
        max_steps=DEFAULT_STEPS[task] if max_steps is None else max_steps,
        batch_size=16,
        seed=seed,
        label_smoothing=DEFAULT_LABEL_SMOOTHING[task],
        readout=DEFAULT_READOUT[task],
    )


def run_quickstart(
    out_dir: Path,
    max_steps: int | None = None,
    seed: int = 0,
    base: str = "gemma-3-270m",
    console: Console | None = None,
    task: str = "pii-intent",
) -> dict[str, dict]:
    """Run the quickstart into ``out_dir``; returns the test and check metrics.

    Raises:
        GuardtuneError: ``task`` has no synthetic data generator.
    """
    if task not in SYNTH_TASKS:
        raise GuardtuneError(f"--task: expected one of {', '.join(SYNTH_TASKS)}, found {task!r}")
    console = console or Console()
    settings = quickstart_settings(task, seed, max_steps)  # bad settings stop before the base loads
    started = time.perf_counter()
    out_dir = Path(out_dir)
    console.rule("[bold]guardtune quickstart")
    console.print(f"1/5 Loading the base model [bold]{base}[/bold]")
    backbone = load_backbone(base)
    n_params = sum(p.numel() for p in backbone.model.parameters())
    console.print(f"    dtype {backbone.dtype}, {n_params / 1e6:.0f}M parameters")

    console.print(f"2/5 Generating synthetic {task} data")
    paths = write_data(task, out_dir / "data", seed)
    console.print(
        f"    {N_GENERATED} rows split 80/10/10 into train/val/test, plus {N_CHECK} check rows "
        f"from held-out templates, in {out_dir / 'data'}"
    )

    console.print(f"3/5 Training a LoRA classifier ({settings.max_steps} steps)")
    report = train(
        task,
        paths["train"],
        out_dir / "model",
        val_path=paths["val"],
        base=base,
        settings=settings,
        overwrite=True,
        backbone=backbone,
    )
    classifier: Classifier = report.classifier

    console.print("4/5 Evaluating")
    results = {}
    for split, title in (
        ("test", "held-out test split"),
        ("check", "check set (unseen templates)"),
    ):
        results[split] = evaluate(
            classifier, paths[split], out_dir / "reports" / split, title=f"{task}: {title}"
        )
        console.print(metrics_rich_table(results[split], title=title))
    # The check set's families show where the guard keys on words instead of intent.
    console.print(groups_rich_table(results["check"]["groups"]))
    card = model_card_text(
        classifier.manifest,
        {
            "validation": report.val_metrics or {},
            "test split": results["test"],
            "check set": results["check"],
        },
    )
    with atomic_file(out_dir / "model" / "README.md") as tmp:
        tmp.write_text(card, encoding="utf-8")

    console.print("5/5 Predictions")
    table = Table("message", "label", *classifier.labels)
    examples = EXAMPLES[task]
    predictions = classifier.predict(examples)
    assert isinstance(predictions, list)
    for text, prediction in zip(examples, predictions, strict=True):
        label = (
            prediction.label if isinstance(prediction.label, str) else ",".join(prediction.label) or "(safe)"
        )
        table.add_row(text, label, *(f"{prediction.scores[n]:.3f}" for n in classifier.labels))
    console.print(table)

    elapsed = time.perf_counter() - started
    model_dir = out_dir / "model"
    weakest = results["check"]["groups"]["weakest"]
    weakest_accuracy = results["check"]["groups"]["metrics"][weakest]["accuracy"]
    console.print(
        f"Done in {elapsed / 60:.1f} min; trained at {report.fit.examples_per_second:.1f} examples/s. "
        f"check set: macro-F1 {results['check']['macro_f1']:.3f}, micro-F1 "
        f"{results['check']['micro_f1']:.3f}; weakest family [bold]{weakest}[/bold] "
        f"(accuracy {weakest_accuracy:.3f})."
    )
    console.print(
        "\n[bold]Use the model[/bold]\n"
        f"  guardtune predict --model {model_dir} --data messages.csv --out predictions.csv\n"
        f"  guardtune eval --model {model_dir} --data {paths['check']} --out {out_dir / 'my-report'}\n"
        "  python -c 'from guardtune import Classifier; "
        f'print(Classifier.load("{model_dir}").predict("whats ur snap?"))\'\n'
        f"Model card: {model_dir / 'README.md'}   Reports: {out_dir / 'reports'}"
    )
    return results
