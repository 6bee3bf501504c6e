"""What every route shares: the loaded guards, the limits, and the micro-batcher they score on.

Routes reach it through :func:`service` (a FastAPI dependency); it checks inputs against the
limits, names the guard a request asks for, and turns worker failures into API errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request

from guardtune.serve import schemas
from guardtune.serve.batcher import MicroBatcher, QueueFullError, WorkerStoppedError
from guardtune.serve.errors import ApiError
from guardtune.serve.guards import Guard
from guardtune.serve.metrics import ServeMetrics
from guardtune.serve.settings import ServeSettings


def unencodable(text: str) -> int | None:
    """Index of the first character UTF-8 cannot encode (a lone surrogate such as ``"\\ud800"``).

    JSON may escape such a character, but it is not valid Unicode text and the tokenizer raises on
    it, so it is refused at the edge rather than reaching a micro-batch.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def moderation_texts(given: str | list[str | schemas.InputPart]) -> list[str]:
    """The texts of a moderation input: a string, strings, or ``{"type": "text"}`` parts."""
    if isinstance(given, str):
        return [given]
    texts = []
    for i, part in enumerate(given):
        if isinstance(part, str):
            texts.append(part)
        elif part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type == "text":
            raise ApiError(422, f"input[{i}].text: expected a string", param="input", code="invalid_value")
        else:
            kind = part.type if len(part.type) <= 40 else part.type[:40] + "..."
            raise ApiError(
                422,
                f"input[{i}]: {kind!r} parts are not supported; guards classify text "
                '(send {"type": "text", "text": "..."})',
                param="input",
                code="unsupported_input_type",
            )
    return texts


@dataclass
class Service:
    """The guards, the limits and the model worker of one app."""

    guards: dict[str, Guard]
    settings: ServeSettings
    batcher: MicroBatcher
    metrics: ServeMetrics
    created: int

    def guard_for(self, name: str | None) -> Guard:
        """The guard a request names (``None``: the only one), else 400 / 404."""
        if name is None:
            # OpenAI's moderation API treats the model as optional; with one guard it is unambiguous.
            if len(self.guards) == 1:
                return next(iter(self.guards.values()))
            loaded = ", ".join(sorted(self.guards))
            raise ApiError(
                400,
                f"model: required when the server holds several guards (loaded: {loaded})",
                param="model",
                code="model_required",
            )
        guard = self.guards.get(name)
        if guard is None:
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise ApiError(
                404,
                f"unknown model {shown!r} (loaded: {', '.join(sorted(self.guards))})",
                param="model",
                code="model_not_found",
            )
        return guard

    def check_texts(self, texts: list[str], field: str) -> None:
        """At least one text, at most ``max_inputs``, each valid Unicode of at most ``max_chars``."""
        limits = self.settings
        if not texts:
            raise ApiError(422, f"{field}: expected at least one text", param=field, code="invalid_value")
        if len(texts) > limits.max_inputs:
            raise ApiError(
                413,
                f"{field}: {len(texts)} items exceed the limit max_inputs={limits.max_inputs}",
                param=field,
                code="max_inputs",
            )
        for i, text in enumerate(texts):
            bad = unencodable(text)
            if bad is not None:
                raise ApiError(
                    422,
                    f"{field}[{i}]: character {bad} is a lone surrogate (expected valid Unicode text)",
                    param=field,
                    code="invalid_text",
                )
            if len(text) > limits.max_chars:
                raise ApiError(
                    413,
                    f"{field}[{i}]: {len(text)} characters exceed the limit max_chars={limits.max_chars}",
                    param=field,
                    code="max_chars",
                )

    async def on_worker(self, awaitable: Awaitable[Any]) -> Any:
        """Await work queued on the model worker, within the request timeout, as API errors."""
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(awaitable, timeout=timeout)
        except QueueFullError as exc:
            raise ApiError(
                503, str(exc), type_="overloaded", code="queue_full", headers={"Retry-After": "1"}
            ) from None
        except WorkerStoppedError as exc:
            raise ApiError(503, str(exc), type_="unavailable", code="stopping") from None
        except TimeoutError:
            raise ApiError(
                504, f"request took longer than request_timeout_s={timeout}", type_="timeout", code="timeout"
            ) from None
        except ApiError:
            raise
        except Exception as exc:
            raise ApiError(500, f"model error: {type(exc).__name__}", type_="server_error") from exc

    async def classify(
        self, guard: Guard, texts: list[str]
    ) -> tuple[np.ndarray, list[tuple[Any, list[str]]]]:
        """Scores of ``texts`` and, per text, the decided label(s) and the labels that flag it."""
        scores = await self.on_worker(self.batcher.score(guard.name, texts))
        return scores, guard.classifier.task.decide_flags(scores)


def score_dict(guard: Guard, row: Any) -> dict[str, float]:
    """One row of scores keyed by the guard's labels."""
    return {label: float(value) for label, value in zip(guard.classifier.labels, row, strict=True)}


def service(request: Request) -> Service:
    """The app's :class:`Service` (a FastAPI dependency)."""
    found: Service = request.app.state.service
    return found
