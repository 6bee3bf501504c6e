"""What the command modules share: the consoles, common options, and the training options.

The training options are declared once and built into a ``TrainSettings``.
Each option's default is read from the field it fills in :class:`~guardtune.train_settings.TrainSettings`
or :class:`~guardtune.methods.lora.LoraSettings`, so the CLI cannot drift from the Python API.
A command takes them all by naming one ``settings: TrainSettings`` parameter and wrapping itself
in :func:`training_options`; the options appear in its help where that parameter stands.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from guardtune.device_map import MAX_MEMORY_HELP
from guardtune.device_map import OPTION_HELP as DEVICE_MAP_HELP
from guardtune.errors import GuardtuneError
from guardtune.methods.lora import LoraSettings
from guardtune.train_settings import TrainSettings

out = Console()
err = Console(stderr=True)

# Options several commands share, declared once so their help reads the same everywhere.
TaskOption = Annotated[str, typer.Option(help="Built-in task name or task YAML file.")]
BaseOption = Annotated[str, typer.Option(help="HF model dir, .gguf file, or gemma-3-270m.")]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")]
DeviceMapOption = Annotated[str | None, typer.Option(help=DEVICE_MAP_HELP)]
MaxMemoryOption = Annotated[str | None, typer.Option(help=MAX_MEMORY_HELP)]
InferenceDtypeOption = Annotated[
    str,
    typer.Option(
        help="auto (bf16 where native), bf16, fp32, or int8: the decoder's projections in int8 "
        "(CPUs with VNNI / AMX, or AVX2), the rest as auto.",
    ),
]
MaxBatchTokensOption = Annotated[
    int,
    typer.Option(help="Most padded tokens per forward pass: long texts go fewer at a time (0: no limit)."),
]
CompileOption = Annotated[
    bool,
    typer.Option(
        "--compile/--no-compile",
        help="Compile the decoder (torch.compile; head models): faster on long runs, after minutes "
        "of compiling in the first batches.",
    ),
]
Int8RecheckOption = Annotated[
    float | None,
    typer.Option(
        "--int8-recheck",
        help="With --dtype int8: score again in float (its weights kept, 200 MB more on Gemma 3 "
        "270M) the texts whose label a score change of this margin could flip; 0.125 re-scored "
        "every label int8 changed on the quickstart's training and validation messages.",
    ),
]
SeedOption = Annotated[int, typer.Option(help="Random seed.")]
LabelledDataOption = Annotated[Path, typer.Option(help="Labelled rows (CSV, JSONL, Parquet).")]
ModelOption = Annotated[Path, typer.Option(help="Model directory.")]


@dataclass(frozen=True)
class TrainingOption:
    """One CLI option and the settings field it fills (``lora.`` names a ``LoraSettings`` field)."""

    name: str
    annotation: Any
    help: str
    field: str
    # Turns the CLI value into the field's value; None on the CLI keeps the field's default.
    parse: Callable[[Any], Any] | None = None


def _parse_lora_targets(value: str) -> list[str]:
    targets = [name.strip() for name in value.split(",") if name.strip()]
    if not targets:
        raise GuardtuneError(f"--lora-targets: expected module names such as q_proj,v_proj, found {value!r}")
    return targets


def _parse_distill(value: str) -> tuple[float, float]:
    try:
        alpha, temperature = (float(part) for part in value.split(","))
    except ValueError as exc:
        raise GuardtuneError(f"--distill: expected ALPHA,TEMPERATURE such as 0.5,2, found {value!r}") from exc
    return alpha, temperature


TRAINING_OPTIONS: tuple[TrainingOption, ...] = (
    TrainingOption("epochs", float, "Passes over the training rows.", "epochs"),
    TrainingOption("max_steps", int | None, "Stop after this many steps.", "max_steps"),
    TrainingOption(
        "batch_size",
        int,
        "Rows per process per forward pass; a step sees batch size x processes x --grad-accum rows.",
        "batch_size",
    ),
    TrainingOption("grad_accum", int, "Forward passes accumulated into one step.", "gradient_accumulation"),
    TrainingOption("lr", float, "Learning rate.", "learning_rate"),
    TrainingOption("lora_r", int, "LoRA rank.", "lora.r"),
    TrainingOption("lora_alpha", int, "LoRA alpha.", "lora.alpha"),
    TrainingOption("lora_dropout", float, "LoRA dropout.", "lora.dropout"),
    TrainingOption(
        "lora_targets",
        str | None,
        "Module names LoRA adapts, comma-separated (default: every projection).",
        "lora.target_modules",
        _parse_lora_targets,
    ),
    TrainingOption("save_steps", int, "Checkpoint every this many steps (for --resume).", "save_steps"),
    TrainingOption("max_length", int, "Tokens kept per text.", "max_length"),
    TrainingOption("dtype", str, "auto (bf16 where native), bf16 or fp32.", "dtype"),
    TrainingOption("device", str, "auto (CUDA when present), cpu, cuda or cuda:N.", "device"),
    TrainingOption(
        "gradient_checkpointing",
        bool,
        "Recompute activations in the backward pass: less memory, ~1/3 slower.",
        "gradient_checkpointing",
    ),
    TrainingOption(
        "quantize",
        str | None,
        "4bit (QLoRA: NF4, double quantisation) or 8bit base weights; needs bitsandbytes.",
        "quantize",
    ),
    TrainingOption("seed", int, "Random seed.", "seed"),
    TrainingOption(
        "label_smoothing",
        float,
        "Share of the gold label spread over all labels in the loss (0: none).",
        "label_smoothing",
    ),
    TrainingOption(
        "neftune_alpha",
        float,
        "NEFTune: noise of this scale on the input embeddings while training (0: none).",
        "neftune_alpha",
    ),
    TrainingOption(
        "readout",
        str,
        "Where the head reads the decoder: last (the message's last token) or eos (an "
        "end-of-sequence token appended to every message).",
        "readout",
    ),
    TrainingOption(
        "distill",
        str | None,
        "ALPHA,TEMPERATURE: mix KL to the teacher's p_<label> columns into the loss.",
        "distill",
        _parse_distill,
    ),
)


def field_default(path: str) -> Any:
    """The declared default of a ``TrainSettings`` field, or of ``lora.<field>`` in ``LoraSettings``."""
    owner: type = LoraSettings if path.startswith("lora.") else TrainSettings
    name = path.removeprefix("lora.")
    (found,) = (f for f in fields(owner) if f.name == name)
    if found.default is not MISSING:
        return found.default
    return found.default_factory()  # type: ignore[operator]  # fields without either are not options


def cli_default(option: TrainingOption) -> Any:
    """What the option shows as its default: the field's, or None where the CLI parses a text."""
    return None if option.parse is not None else field_default(option.field)


def build_settings(values: dict[str, Any]) -> TrainSettings:
    """``TrainSettings`` from the parsed options, keyed by option name."""
    top: dict[str, Any] = {}
    lora: dict[str, Any] = {}
    for option in TRAINING_OPTIONS:
        value = values[option.name]
        if option.parse is not None:
            if value is None:
                continue  # the field's own default
            value = option.parse(value)
        if option.field.startswith("lora."):
            lora[option.field.removeprefix("lora.")] = value
        else:
            top[option.field] = value
    return TrainSettings(**top, lora=LoraSettings(**lora))


def _parameters() -> list[inspect.Parameter]:
    return [
        inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=cli_default(option),
            annotation=Annotated[option.annotation, typer.Option(help=option.help)],
        )
        for option in TRAINING_OPTIONS
    ]


Command = TypeVar("Command", bound=Callable[..., None])


def training_options(command: Command) -> Command:
    """Give ``command`` every training option in place of its ``settings`` parameter.

    Typer reads the returned function's signature; the call reaches ``command`` with the options
    gathered into one ``TrainSettings`` (validated there, all problems reported at once).
    """
    hints = typing.get_type_hints(command, include_extras=True)
    own = inspect.signature(command).parameters
    if "settings" not in own:
        raise TypeError(f"{command.__name__}: expected a `settings: TrainSettings` parameter")
    names = {option.name for option in TRAINING_OPTIONS}
    parameters: list[inspect.Parameter] = []
    for parameter in own.values():
        if parameter.name == "settings":
            parameters.extend(_parameters())
        else:
            parameters.append(
                parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[parameter.name])
            )

    @functools.wraps(command)
    def wrapper(**values: Any) -> None:
        options = {name: values.pop(name) for name in names}
        command(**values, settings=build_settings(options))

    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return typing.cast(Command, wrapper)
