"""The ``guardtune`` command: a dispatch table over the Python API; no logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from guardtune.backbone import DEFAULT_BASE
from guardtune.cli_data import data_split, data_stats, data_synth
from guardtune.cli_deploy import export, serve
from guardtune.cli_options import err, out
from guardtune.cli_predict import calibrate, eval_command, predict
from guardtune.cli_schema import schema
from guardtune.cli_train import compare, label, train
from guardtune.errors import GuardtuneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn small decoder-only LLMs into fast, calibrated text classifiers with LoRA.",
)
data_app = typer.Typer(no_args_is_help=True, help="Make and inspect data sets.")
app.add_typer(data_app, name="data")


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


def validate(task: Annotated[str, typer.Argument(help="Task YAML file or built-in name.")]) -> None:
    """Check a task file and print every problem in it."""
    from guardtune.task import load_task

    spec = load_task(task)
    out.print(f"{task}: OK ({spec.mode}-label, labels: {', '.join(spec.label_names)})")


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


# Registered here, in the order `guardtune --help` lists them; each module holds one group's commands.
app.command()(quickstart)
app.command()(train)
app.command()(label)
app.command()(compare)
app.command("eval")(eval_command)
app.command()(calibrate)
app.command()(predict)
app.command()(serve)
app.command()(validate)
app.command()(schema)
app.command("methods")(list_methods)
app.command()(export)
data_app.command("synth")(data_synth)
data_app.command("split")(data_split)
data_app.command("stats")(data_stats)


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
