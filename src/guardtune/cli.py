"""The ``guardtune`` command: a dispatch table over the Python API; no logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from guardtune.backbone import DEFAULT_BASE
from guardtune.cli_schema import schema
from guardtune.errors import GuardtuneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn small decoder-only LLMs into fast, calibrated text classifiers with LoRA.",
)
data_app = typer.Typer(no_args_is_help=True, help="Make and inspect data sets.")
app.add_typer(data_app, name="data")
out = Console()
err = Console(stderr=True)

# Options several commands share, declared once so their help reads the same everywhere.
TaskOption = Annotated[str, typer.Option(help="Built-in task name or task YAML file.")]
BaseOption = Annotated[str, typer.Option(help="HF model dir, .gguf file, or gemma-3-270m.")]
EpochsOption = Annotated[float, typer.Option(help="Passes over the training rows.")]
MaxLengthOption = Annotated[int, typer.Option(help="Tokens kept per text.")]
DtypeOption = Annotated[str, typer.Option(help="auto (bf16 where native), bf16 or fp32.")]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")]
InferenceDtypeOption = Annotated[
    str,
    typer.Option(
        help="auto (bf16 where native), bf16, fp32, or int8: the decoder's projections in int8 "
        "(CPUs with VNNI / AMX), the rest as auto.",
    ),
]
SeedOption = Annotated[int, typer.Option(help="Random seed.")]
LabelledDataOption = Annotated[Path, typer.Option(help="Labelled rows (CSV, JSONL, Parquet).")]
ModelOption = Annotated[Path, typer.Option(help="Model directory.")]


@app.command()
def quickstart(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the data, model and reports go.")] = Path(
        "guardtune-quickstart"
    ),
    max_steps: Annotated[
        int | None, typer.Option(help="Training steps of 16 rows (default 120; 240 for pii-categories).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for data and training.")] = 0,
    base: Annotated[str, typer.Option(help="Base model.")] = DEFAULT_BASE,
    task: Annotated[str, typer.Option(help="pii-intent (the default) or pii-categories.")] = "pii-intent",
) -> None:
    """The main job: synthetic PII chat data -> LoRA classifier on the embedded Gemma -> report."""
    from guardtune.quickstart import run_quickstart

    run_quickstart(out_dir, max_steps=max_steps, seed=seed, base=base, console=out, task=task)


@data_app.command("synth")
def data_synth(
    task: Annotated[str, typer.Option(help="pii-intent or pii-categories.")],
    n: Annotated[int | None, typer.Option(help="Number of rows.")] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="CSV, JSONL or Parquet file to write.")
    ] = None,
    seed: SeedOption = 0,
    split: Annotated[
        str, typer.Option(help="train, or check: phrasings the train generator never uses.")
    ] = "train",
    family: Annotated[
        list[str] | None, typer.Option(help="Only this template family (repeat for several).")
    ] = None,
    list_families: Annotated[
        bool, typer.Option("--list-families", help="Print the task's families and their row shares.")
    ] = False,
    templates: Annotated[
        Path | None, typer.Option(help="Folder of <task>/<family>.yaml files to use instead of the built-in.")
    ] = None,
) -> None:
    """Generate a synthetic data set for a built-in PII task; a `family` column names each row's family."""
    from guardtune.data import synth
    from guardtune.data.writers import write_table

    if list_families:
        out.print(synth.describe_families(task, templates), highlight=False, markup=False)
        return
    if n is None or out_file is None:
        raise GuardtuneError("data synth: --n and --out are required (or pass --list-families)")
    if split not in synth.SPLITS:
        raise GuardtuneError(f"--split: expected train or check, found {split!r}")
    frame = synth.generate(task, n, seed, split=split, families=family, templates=templates)  # type: ignore[arg-type]
    write_table(frame, out_file)
    column = frame.columns[1]
    counts = frame[column].replace("", "(none)").value_counts().to_dict()
    per_family = frame["family"].value_counts().to_dict()
    out.print(f"Wrote {len(frame)} rows to {out_file}: {counts}; families {per_family}")


@data_app.command("split")
def data_split(
    task: TaskOption,
    data: LabelledDataOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for train / val / test files.")],
    val: Annotated[float, typer.Option(help="Validation share.")] = 0.1,
    test: Annotated[float, typer.Option(help="Test share.")] = 0.1,
    seed: SeedOption = 0,
) -> None:
    """Split a labelled file into stratified train / val / test files of the same format."""
    from guardtune.data.readers import label_counts, load_examples
    from guardtune.data.splits import stratified_split
    from guardtune.data.writers import write_table
    from guardtune.task import load_task

    spec = load_task(task)
    rows = load_examples(data, spec)
    assert rows.labels is not None
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise GuardtuneError(f"--val {val} --test {test}: expected shares in [0, 1) that sum below 1")
    parts = stratified_split(rows.labels, (1 - val - test, val, test), seed=seed)
    table = Table("split", "rows", *label_counts(spec, rows.labels))
    for name, indices in zip(("train", "val", "test"), parts, strict=True):
        if len(indices) == 0:
            continue
        write_table(rows.frame.iloc[indices], out_dir / f"{name}{data.suffix}")
        counts = label_counts(spec, [rows.labels[i] for i in indices])
        table.add_row(name, str(len(indices)), *map(str, counts.values()))
    out.print(table)
    out.print(f"Wrote the splits to {out_dir}")


@data_app.command("stats")
def data_stats(
    task: TaskOption,
    data: LabelledDataOption,
) -> None:
    """Check a labelled file against a task and print rows per label."""
    from guardtune.data.readers import label_counts, load_examples
    from guardtune.task import load_task

    spec = load_task(task)
    rows = load_examples(data, spec)
    assert rows.labels is not None
    counts = label_counts(spec, rows.labels)
    table = Table("label", "rows", "share")
    for label, count in counts.items():
        table.add_row(label, str(count), f"{count / len(rows):.1%}")
    out.print(table)
    out.print(f"{len(rows)} rows in {data}, all valid for task {spec.name}", soft_wrap=True)


@app.command()
def train(
    task: TaskOption,
    train_file: Annotated[Path, typer.Option("--train", help="Training rows (CSV, JSONL, Parquet).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    val_file: Annotated[
        Path | None, typer.Option("--val", help="Validation rows; default: 10% of --train.")
    ] = None,
    base: BaseOption = DEFAULT_BASE,
    method: Annotated[
        str | None,
        typer.Option(
            help="A registered method (`guardtune methods` lists them); default: the one marked there."
        ),
    ] = None,
    epochs: EpochsOption = 3.0,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Rows per process per forward pass; a step sees batch size x processes x --grad-accum rows."
        ),
    ] = 16,
    grad_accum: Annotated[int, typer.Option(help="Forward passes accumulated into one step.")] = 1,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 5e-4,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    lora_targets: Annotated[
        str | None,
        typer.Option(help="Module names LoRA adapts, comma-separated (default: every projection)."),
    ] = None,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every this many steps (for --resume).")] = 50,
    max_length: MaxLengthOption = 256,
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations in the backward pass: less memory, ~1/3 slower.")
    ] = False,
    quantize: Annotated[
        str | None,
        typer.Option(help="4bit (QLoRA: NF4, double quantisation) or 8bit base weights; needs bitsandbytes."),
    ] = None,
    seed: SeedOption = 0,
    distill: Annotated[
        str | None,
        typer.Option(help="ALPHA,TEMPERATURE: mix KL to the teacher's p_<label> columns into the loss."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run into the same --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    allow_missing_labels: Annotated[
        bool,
        typer.Option(
            help="Train even if a label of a single-label task has no training rows (else an error)."
        ),
    ] = False,
) -> None:
    """Train a LoRA classifier and write its model directory."""
    from guardtune.api import train as train_model
    from guardtune.eval import metrics_rich_table
    from guardtune.methods import DEFAULT_METHOD, LoraSettings
    from guardtune.methods.lora import DEFAULT_TARGETS
    from guardtune.train import TrainSettings

    settings = TrainSettings(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        gradient_accumulation=grad_accum,
        learning_rate=lr,
        max_length=max_length,
        seed=seed,
        save_steps=save_steps,
        dtype=dtype,
        device=device,
        gradient_checkpointing=gradient_checkpointing,
        quantize=quantize,
        distill=_parse_distill(distill),
        lora=LoraSettings(
            r=lora_r,
            alpha=lora_alpha,
            dropout=lora_dropout,
            target_modules=list(DEFAULT_TARGETS)
            if lora_targets is None
            else _parse_lora_targets(lora_targets),
        ),
    )
    report = train_model(
        task,
        train_file,
        out_dir,
        val_path=val_file,
        base=base,
        method=method or DEFAULT_METHOD,
        settings=settings,
        resume=resume,
        overwrite=overwrite,
        allow_missing_labels=allow_missing_labels,
    )
    if not report.main_process:
        return  # under accelerate launch / torchrun the main process alone reports
    for note in report.notes:
        out.print(f"[yellow]{note}[/yellow]")
    if report.val_metrics:
        out.print(metrics_rich_table(report.val_metrics, title="Validation"))
    processes = f" on {report.fit.processes} processes" if report.fit.processes > 1 else ""
    out.print(
        f"Trained {report.fit.steps} steps{processes} in {report.fit.seconds:.0f} s "
        f"({report.fit.examples_per_second:.1f} examples/s). Model: {report.directory}"
    )


def _parse_lora_targets(value: str) -> list[str]:
    targets = [name.strip() for name in value.split(",") if name.strip()]
    if not targets:
        raise GuardtuneError(f"--lora-targets: expected module names such as q_proj,v_proj, found {value!r}")
    return targets


def _parse_distill(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        alpha, temperature = (float(part) for part in value.split(","))
    except ValueError as exc:
        raise GuardtuneError(f"--distill: expected ALPHA,TEMPERATURE such as 0.5,2, found {value!r}") from exc
    return alpha, temperature


@app.command()
def label(
    model: Annotated[Path, typer.Option(help="Teacher model directory.")],
    data: Annotated[Path, typer.Option(help="Rows to score (CSV, JSONL, Parquet).")],
    out_file: Annotated[Path, typer.Option("--out", help="Output file with p_<label> columns.")],
) -> None:
    """Write a teacher's soft labels (p_<label> columns) for distilling into a student."""
    from guardtune.api import label_file

    frame = label_file(model, data, out_file)
    out.print(f"Wrote teacher scores for {len(frame)} rows to {out_file}")


@app.command()
def compare(
    task: TaskOption,
    train_file: Annotated[Path, typer.Option("--train", help="Training rows.")],
    val_file: Annotated[Path, typer.Option("--val", help="Validation rows.")],
    test_file: Annotated[Path, typer.Option("--test", help="Test rows.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for models, reports and the table.")],
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods (default: every registered method).")
    ] = None,
    base: BaseOption = DEFAULT_BASE,
    epochs: EpochsOption = 3.0,
    max_steps: Annotated[int | None, typer.Option(help="Stop each run after this many steps.")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 16,
    max_length: MaxLengthOption = 256,
    dtype: DtypeOption = "auto",
    seed: SeedOption = 0,
) -> None:
    """Train several methods on the same data and write one comparison table."""
    from guardtune.compare import compare_methods, comparison_markdown
    from guardtune.methods import available_methods
    from guardtune.task import load_task
    from guardtune.train import TrainSettings

    settings = TrainSettings(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        max_length=max_length,
        dtype=dtype,
        seed=seed,
    )
    names = available_methods() if methods is None else [m.strip() for m in methods.split(",") if m.strip()]
    rows = compare_methods(
        task, train_file, val_file, test_file, out_dir, names, base=base, settings=settings
    )
    out.print(comparison_markdown(rows, load_task(task)))
    out.print(f"Table: {out_dir / 'compare.md'}")


LONG_TEXT_OPTION = typer.Option(
    help="Texts over the max length: head-tail (keep both ends) or windows (score overlapping "
    "windows, keep the most flagged); default: the task's setting."
)


def _long_text(value: str | None) -> str | None:
    from guardtune.task import LONG_TEXT_MODES

    if value is not None and value not in LONG_TEXT_MODES:
        raise GuardtuneError(f"--long-text: expected one of {', '.join(LONG_TEXT_MODES)}, found {value!r}")
    return value


@app.command("eval")
def eval_command(
    model: ModelOption,
    data: LabelledDataOption,
    out_dir: Annotated[Path, typer.Option("--out", help="Report directory to write.")],
    dtype: InferenceDtypeOption = "auto",
    device: DeviceOption = "auto",
    long_text: Annotated[str | None, LONG_TEXT_OPTION] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            help="Column whose values group rows for per-group metrics (default: family, if present)."
        ),
    ] = None,
) -> None:
    """Evaluate a model: metrics.json, report.md, plots and errors.csv."""
    from guardtune.api import Classifier, evaluate
    from guardtune.eval import groups_rich_table, metrics_rich_table

    reading = _long_text(long_text)
    classifier = Classifier.load(model, dtype=dtype, device=device)
    classifier.long_text = reading
    metrics = evaluate(classifier, data, out_dir, group_by=group_by)
    out.print(metrics_rich_table(metrics, title=f"{data.name} (n={metrics['n']})"))
    if "groups" in metrics:
        out.print(groups_rich_table(metrics["groups"]))
    out.print(f"Report: {out_dir / 'report.md'}")


@app.command()
def calibrate(
    model: Annotated[Path, typer.Option(help="Model directory; calibration.json is written into it.")],
    data: Annotated[
        Path, typer.Option(help="Labelled validation rows (CSV, JSONL, Parquet), not the test set.")
    ],
    label: Annotated[
        str | None,
        typer.Option(help="Label to threshold; default: unsafe (or the 2nd label) of a 2-label task."),
    ] = None,
    max_fpr: Annotated[
        float | None, typer.Option(help="Highest recall with at most this false-positive rate.")
    ] = None,
    min_recall: Annotated[
        float | None, typer.Option(help="Highest precision with at least this recall.")
    ] = None,
    dtype: InferenceDtypeOption = "auto",
    device: DeviceOption = "auto",
) -> None:
    """Fit temperature scaling and thresholds (max F1 by default) on validation rows."""
    from guardtune.api import calibrate as calibrate_model

    cal = calibrate_model(
        model, data, label=label, max_fpr=max_fpr, min_recall=min_recall, dtype=dtype, device=device
    )
    out.print(f"Temperature {cal.temperature:.3f} (fitted on {cal.n} rows of {data.name})")
    out.print(f"ECE (15 bins): {cal.ece_before:.3f} uncalibrated -> {cal.ece_after:.3f} calibrated")
    if cal.thresholds:
        goal = {"f1": "max F1", "max_fpr": f"FPR <= {cal.target}", "min_recall": f"recall >= {cal.target}"}
        table = Table(
            "label", "threshold", "precision", "recall", "FPR", title=f"Thresholds ({goal[cal.objective]})"
        )
        for name, threshold in cal.thresholds.items():
            rates = cal.achieved[name]
            table.add_row(
                name, f"{threshold:.4f}", *(_rate(rates.get(k)) for k in ("precision", "recall", "fpr"))
            )
        out.print(table)
    else:
        out.print("No thresholds: the most likely label decides (name one with --label).")
    for note in cal.notes:
        out.print(f"[yellow]{note}[/yellow]")
    out.print(f"Wrote {model / 'calibration.json'}")


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@app.command()
def predict(
    model: ModelOption,
    data: Annotated[
        Path, typer.Option(help="Rows to classify (CSV, JSONL, Parquet); with --engine ray also a folder.")
    ],
    out_file: Annotated[
        Path,
        typer.Option("--out", help="Output file (CSV, JSONL, Parquet); with --engine ray a new folder."),
    ],
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 32,
    dtype: InferenceDtypeOption = "auto",
    device: DeviceOption = "auto",
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data actors).")] = "local",
    output_format: Annotated[
        str, typer.Option("--format", help="ray engine: parquet or csv part files.")
    ] = "parquet",
    actors: Annotated[int, typer.Option(help="ray engine: actors, each holding the model once.")] = 2,
    address: Annotated[
        str | None, typer.Option(help="ray engine: cluster to join (default: start Ray on this machine).")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="ray engine: CPUs of the local Ray (default: all).")
    ] = None,
    cpus_per_actor: Annotated[float, typer.Option(help="ray engine: CPUs reserved per actor.")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(help="ray engine: GPUs reserved per actor.")] = 0.0,
    long_text: Annotated[str | None, LONG_TEXT_OPTION] = None,
) -> None:
    """Classify a file: the input columns plus `label` and one `score_<label>` column per label."""
    from guardtune.api import Classifier, predict_file

    reading = _long_text(long_text)
    if reading is not None and engine != "local":
        raise GuardtuneError("--long-text: supported with --engine local only")
    if device != "auto" and engine != "local":
        raise GuardtuneError(
            "--device: supported with --engine local only (ray places actors by --gpus-per-actor)"
        )
    if engine == "ray":
        from guardtune.engines.ray_predict import RaySettings, predict_with_ray

        settings = RaySettings(
            actors=actors,
            batch_size=batch_size,
            address=address,
            num_cpus=num_cpus,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
        )
        counts = predict_with_ray(
            model,
            data,
            out_file,
            output_format=output_format,  # type: ignore[arg-type]  # checked by predict_with_ray
            settings=settings,
            dtype=dtype,
        )
    elif engine == "local":
        classifier = Classifier.load(model, dtype=dtype, device=device)
        classifier.long_text = reading
        counts = predict_file(classifier, data, out_file, batch_size=batch_size)
    else:
        raise GuardtuneError(f"--engine: expected local or ray, found {engine!r}")
    shown = {label or "(none)": n for label, n in counts.items()}
    out.print(f"Wrote {sum(counts.values())} predictions to {out_file}: {shown}")


@app.command()
def serve(
    model: Annotated[
        list[str], typer.Option(help="A guard as NAME=DIR (or DIR, named after it); repeat for more.")
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    dtype: InferenceDtypeOption = "auto",
    device: DeviceOption = "auto",
    max_batch_size: Annotated[int, typer.Option(help="Most texts scored in one micro-batch.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="Longest a request waits to share a batch.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Jobs waiting for the model before 503.")] = 256,
    max_inputs: Annotated[int, typer.Option(help="Texts per request (messages per chat).")] = 64,
    max_chars: Annotated[int, typer.Option(help="Characters per text.")] = 4000,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1_000_000,
    timeout: Annotated[float, typer.Option(help="Seconds before a waiting request gets 504.")] = 30.0,
    max_new_tokens: Annotated[int, typer.Option(help="Cap on tokens per chat reply.")] = 64,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="Require the bearer key in this file on every route but /healthz."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="GUARDTUNE_API_KEY",
            help="The key itself (visible in ps; prefer GUARDTUNE_API_KEY or --api-key-file).",
        ),
    ] = None,
) -> None:
    """Serve guards over HTTP: /v1/classify, /v1/moderations, /v1/chat/completions, /metrics."""
    from guardtune.serve import ServeSettings, create_app, load_guards, parse_model_spec, read_api_key, run

    if api_key_file is not None:
        if api_key is not None:
            raise GuardtuneError(
                "--api-key-file: give the key one way (the file, --api-key or GUARDTUNE_API_KEY)"
            )
        api_key = read_api_key(api_key_file)

    settings = ServeSettings(
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_inputs=max_inputs,
        max_chars=max_chars,
        max_body_bytes=max_body_bytes,
        request_timeout_s=timeout,
        max_new_tokens=max_new_tokens,
        api_key=api_key,
    )
    specs: dict[str, Path] = {}
    for spec in model:
        name, directory = parse_model_spec(spec)
        if name in specs:
            raise GuardtuneError(f"--model {spec}: the name {name!r} is given twice")
        specs[name] = directory
    with err.status(f"Loading {len(specs)} guard(s)...", spinner="dots"):
        guards = load_guards(specs, dtype=dtype, device=device)
    bases = {id(g.backbone) for g in guards.values()}
    out.print(
        f"Loaded {', '.join(guards)} on {len(bases)} base model(s); serving on http://{host}:{port}"
        + (" (API key required)" if api_key else ""),
        soft_wrap=True,
    )
    run(create_app(guards, settings), host=host, port=port)


@app.command()
def validate(task: Annotated[str, typer.Argument(help="Task YAML file or built-in name.")]) -> None:
    """Check a task file and print every problem in it."""
    from guardtune.task import load_task

    spec = load_task(task)
    out.print(f"{task}: OK ({spec.mode}-label, labels: {', '.join(spec.label_names)})")


app.command()(schema)


@app.command("methods")
def list_methods() -> None:
    """List the registered adaptation methods (what each reads, how it exports) and built-in tasks."""
    from guardtune.methods import DEFAULT_METHOD, available_methods, get_method
    from guardtune.task import builtin_tasks

    out.print("methods: " + ", ".join(available_methods()))
    for name in available_methods():
        info = get_method(name).info
        default = " (default)" if name == DEFAULT_METHOD else ""
        exports = ", ".join(info.export_formats) or "none"
        line = f"  {name}{default}: {info.description}; export: {exports}"
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    out.print("tasks: " + ", ".join(sorted(builtin_tasks())))


@app.command()
def export(
    model: ModelOption,
    out_path: Annotated[Path, typer.Option("--out", help="Directory (merged) or .gguf file (gguf).")],
    fmt: Annotated[
        str, typer.Option("--format", help="merged (Hugging Face directory) or gguf (llama.cpp).")
    ] = "merged",
    outtype: Annotated[str, typer.Option(help="GGUF tensor type: f16 or f32.")] = "f16",
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Merge the adapter into the base and write it for tools without guardtune (HF, vLLM, llama.cpp)."""
    from guardtune.export import export_model

    with err.status(f"Exporting {model} as {fmt}...", spinner="dots"):
        written = export_model(model, fmt, out_path, outtype=outtype, overwrite=overwrite)  # type: ignore[arg-type]
    out.print(f"Wrote {written}", soft_wrap=True)


def main() -> None:
    """Entry point: run the app, turning bad input into a one-line error and exit code 1."""
    try:
        app(standalone_mode=False)
    except GuardtuneError as exc:
        # Escaped: messages quote user text and install hints such as 'guardtune[ray]'.
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
