"""``guardtune schema task|model|calibration``: the JSON Schema of a guardtune file, for editors."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import typer

from guardtune.errors import GuardtuneError

SchemaKind = Literal["task", "model", "calibration"]
FILES = {"task": "a task YAML file", "model": "guardtune.json", "calibration": "calibration.json"}


def file_schema(kind: SchemaKind) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a task file, ``guardtune.json`` or ``calibration.json``."""
    from guardtune.eval.calibration_file import Calibration
    from guardtune.modeldir import Manifest
    from guardtune.task import TaskSpec
    from guardtune.validation import json_schema

    model = {"task": TaskSpec, "model": Manifest, "calibration": Calibration}[kind]
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **json_schema(model)}
    schema["title"] = f"guardtune {kind}: {FILES[kind]}"
    return schema


def schema(
    kind: Annotated[str, typer.Argument(help="task (task YAML), model (guardtune.json) or calibration.")],
) -> None:
    """Print the JSON Schema of a task file, guardtune.json or calibration.json.

    Save it and point your editor at it, e.g. for YAML files in VS Code:
    `guardtune schema task > task.schema.json` and `# yaml-language-server: $schema=task.schema.json`.
    """
    if kind not in FILES:
        raise GuardtuneError(f"schema {kind!r}: expected one of {', '.join(FILES)}")
    typer.echo(json.dumps(file_schema(kind), indent=2))  # type: ignore[arg-type]
