"""The commands that take a model out of training: ``serve`` (HTTP) and ``export`` (merged, GGUF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from guardtune.batches import DEFAULT_MAX_BATCH_TOKENS
from guardtune.cli_options import (
    DeviceMapOption,
    DeviceOption,
    InferenceDtypeOption,
    MaxBatchTokensOption,
    MaxMemoryOption,
    ModelOption,
    err,
    out,
)
from guardtune.errors import GuardtuneError


def serve(
    model: Annotated[
        list[str], typer.Option(help="A guard as NAME=DIR (or DIR, named after it); repeat for more.")
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    dtype: InferenceDtypeOption = "auto",
    device: DeviceOption = "auto",
    device_map: DeviceMapOption = None,
    max_memory: MaxMemoryOption = None,
    max_batch_size: Annotated[int, typer.Option(help="Most texts scored in one micro-batch.")] = 32,
    max_batch_tokens: MaxBatchTokensOption = DEFAULT_MAX_BATCH_TOKENS,
    max_wait_ms: Annotated[float, typer.Option(help="Longest a request waits to share a batch.")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Jobs waiting for the model before 503.")] = 256,
    max_inputs: Annotated[int, typer.Option(help="Texts per request (messages per chat).")] = 64,
    max_chars: Annotated[int, typer.Option(help="Characters per text.")] = 4000,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1_000_000,
    timeout: Annotated[float, typer.Option(help="Seconds before a waiting request gets 504.")] = 30.0,
    max_new_tokens: Annotated[int, typer.Option(help="Cap on tokens per chat reply.")] = 64,
    chat_preamble_file: Annotated[
        Path | None,
        typer.Option(
            help="Text a chat prompt starts with when the base has no chat template (replaces the "
            "built-in instruction and two example turns; an empty file for none)."
        ),
    ] = None,
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
    from guardtune.serve import (
        TRANSCRIPT_PREAMBLE,
        ServeSettings,
        create_app,
        load_guards,
        parse_model_spec,
        read_api_key,
        read_chat_preamble,
        run,
    )

    if api_key_file is not None:
        if api_key is not None:
            raise GuardtuneError(
                "--api-key-file: give the key one way (the file, --api-key or GUARDTUNE_API_KEY)"
            )
        api_key = read_api_key(api_key_file)

    settings = ServeSettings(
        max_batch_size=max_batch_size,
        max_batch_tokens=max_batch_tokens,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_inputs=max_inputs,
        max_chars=max_chars,
        max_body_bytes=max_body_bytes,
        request_timeout_s=timeout,
        max_new_tokens=max_new_tokens,
        api_key=api_key,
        chat_preamble=(
            TRANSCRIPT_PREAMBLE if chat_preamble_file is None else read_chat_preamble(chat_preamble_file)
        ),
    )
    specs: dict[str, Path] = {}
    for spec in model:
        name, directory = parse_model_spec(spec)
        if name in specs:
            raise GuardtuneError(f"--model {spec}: the name {name!r} is given twice")
        specs[name] = directory
    with err.status(f"Loading {len(specs)} guard(s)...", spinner="dots"):
        guards = load_guards(specs, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory)
    bases = {id(g.backbone) for g in guards.values()}
    out.print(
        f"Loaded {', '.join(guards)} on {len(bases)} base model(s); serving on http://{host}:{port}"
        + (" (API key required)" if api_key else ""),
        soft_wrap=True,
    )
    run(create_app(guards, settings), host=host, port=port)


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
