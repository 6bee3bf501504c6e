"""The guard server's app factory: a thin HTTP shell over :class:`guardtune.Classifier`.

Routes: ``POST /v1/classify``, ``POST /v1/moderations`` (OpenAI shapes), ``POST /v1/chat/completions``
(dual path: the base answers with adapters off, the guard screens both sides), ``GET /v1/models``,
``GET /healthz`` and ``GET /metrics``. Models are loaded before the app is built; all model work
runs on the micro-batcher's worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardtune.errors import GuardtuneError
from guardtune.serve import schemas
from guardtune.serve.batcher import MicroBatcher, QueueFullError, WorkerStoppedError
from guardtune.serve.guards import Guard, generate_reply
from guardtune.serve.metrics import ServeMetrics

OPEN_PATHS = ("/healthz",)


@dataclass
class ServeSettings:
    """Server limits and batching; every problem is reported at once on construction.

    Args:
        max_batch_size: most texts scored in one micro-batch.
        max_wait_ms: longest a request waits for others to share its batch.
        max_queue: most jobs waiting for the model; beyond it requests get 503 + Retry-After.
        max_inputs: most texts per classify / moderation request (messages per chat request).
        max_chars: most characters per text (per chat message).
        max_body_bytes: largest request body.
        request_timeout_s: a request still waiting after this gets 504.
        max_new_tokens: the cap on tokens a chat reply may generate.
        api_key: when set, every route but /healthz needs ``Authorization: Bearer KEY``.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_inputs: int = 64
    max_chars: int = 4000
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 30.0
    max_new_tokens: int = 64
    api_key: str | None = None
    refusal: str = "I can't help with that: the message was flagged by the guard."

    def __post_init__(self) -> None:
        problems = [
            f"--{name.replace('_', '-')}: expected a positive number, found {getattr(self, name)}"
            for name in (
                "max_batch_size",
                "max_queue",
                "max_inputs",
                "max_chars",
                "max_body_bytes",
                "request_timeout_s",
                "max_new_tokens",
            )
            if getattr(self, name) <= 0
        ]
        if self.max_wait_ms < 0:
            problems.append(f"--max-wait-ms: expected 0 or more, found {self.max_wait_ms}")
        if self.api_key is not None and not self.api_key.strip():
            problems.append("--api-key: expected a non-empty key")
        if problems:
            raise GuardtuneError("; ".join(problems))


def read_api_key(path: Path) -> str:
    """The API key in ``path`` (surrounding whitespace and the final newline dropped).

    A key in a file stays out of ``ps`` and shell history, unlike ``--api-key KEY``.

    Raises:
        GuardtuneError: the file is missing, unreadable, empty or holds more than one line.
    """
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise GuardtuneError(f"--api-key-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GuardtuneError(f"--api-key-file {path}: cannot read ({exc})") from exc
    if not key:
        raise GuardtuneError(f"--api-key-file {path}: the file is empty (expected the key on one line)")
    if "\n" in key:
        raise GuardtuneError(f"--api-key-file {path}: expected the key alone on one line, found more lines")
    return key


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


class ApiError(Exception):
    """An error response in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=dict(self.headers or {}))


async def _send_error(send: Send, error: ApiError) -> None:
    response = error.response()
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, whether announced or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = ApiError(
            413,
            f"request body exceeds the limit max_body_bytes={self.limit}",
            param="body",
            code="max_body_bytes",
        )
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_error(send, too_large)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _send_error(send, too_large)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ApiKeyMiddleware:
    """Every route but /healthz needs ``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"")
        given = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        if not hmac.compare_digest(given, self.key):
            message = "missing API key" if not given else "invalid API key"
            await _send_error(
                send,
                ApiError(
                    401,
                    f"{message} (send Authorization: Bearer KEY)",
                    type_="authentication_error",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                ),
            )
            return
        await self.app(scope, receive, send)


class MetricsMiddleware:
    """Count requests and errors and time them, labelled by route (unknown paths share one label)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "unmatched"
        status = 500
        start = time.perf_counter()

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse, "description": text}
    for code, text in (
        (400, "Malformed JSON body"),
        (401, "Missing or wrong API key"),
        (404, "Unknown model"),
        (413, "Over a size limit (body, inputs per request, characters per input)"),
        (422, "Wrong field types or values"),
        (503, "Queue full (see Retry-After) or server stopping"),
        (504, "Request timed out"),
    )
}


def create_app(guards: dict[str, Guard], settings: ServeSettings | None = None) -> FastAPI:
    """Build the guard server over already loaded guards.

    Args:
        guards: guard name -> :class:`Guard` (see :func:`guardtune.serve.load_guards`).
        settings: limits, batching and the optional API key.

    Returns:
        A FastAPI app; its lifespan starts and stops the model worker thread.

    Example:
        >>> guards = load_guards({"pii": Path("runs/pii")})
        >>> uvicorn.run(create_app(guards), host="127.0.0.1", port=8000)
    """
    settings = settings or ServeSettings()
    if not guards:
        raise GuardtuneError("create_app: no guards given (load at least one model)")
    metrics = ServeMetrics()

    def score(name: str, texts: list[str]) -> Any:
        return guards[name].classifier.predict_proba(texts, batch_size=settings.max_batch_size)

    batcher = MicroBatcher(score, settings.max_batch_size, settings.max_wait_ms, settings.max_queue, metrics)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(
        title="guardtune guard server",
        version="1",
        lifespan=lifespan,
        description="Text classifiers and guardrails trained with guardtune; OpenAI-compatible moderations.",
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.guards = guards
    app.state.settings = settings

    # -- errors ----------------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            detail = next(p for p in problems if p.get("type") == "json_invalid")
            reason = (detail.get("ctx") or {}).get("error", "cannot parse")
            return ApiError(400, f"malformed JSON body: {reason}", code="json_invalid").response()
        parts = []
        for p in problems[:10]:
            where = ".".join(str(x) for x in p.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {p.get('msg')}")
        first = ".".join(str(x) for x in problems[0].get("loc", ()) if x != "body") if problems else None
        return ApiError(422, "; ".join(parts), param=first or None, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), code="http_error", headers=exc.headers).response()

    # -- helpers ---------------------------------------------------------------------------------

    def guard_for(name: str | None) -> Guard:
        if name is None:
            # OpenAI's moderation API treats the model as optional; with one guard it is unambiguous.
            if len(guards) == 1:
                return next(iter(guards.values()))
            raise ApiError(
                400,
                f"model: required when the server holds several guards (loaded: {', '.join(sorted(guards))})",
                param="model",
                code="model_required",
            )
        guard = guards.get(name)
        if guard is None:
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise ApiError(
                404,
                f"unknown model {shown!r} (loaded: {', '.join(sorted(guards))})",
                param="model",
                code="model_not_found",
            )
        return guard

    def check_texts(texts: list[str], field: str) -> None:
        if not texts:
            raise ApiError(422, f"{field}: expected at least one text", param=field, code="invalid_value")
        if len(texts) > settings.max_inputs:
            raise ApiError(
                413,
                f"{field}: {len(texts)} items exceed the limit max_inputs={settings.max_inputs}",
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
            if len(text) > settings.max_chars:
                raise ApiError(
                    413,
                    f"{field}[{i}]: {len(text)} characters exceed the limit max_chars={settings.max_chars}",
                    param=field,
                    code="max_chars",
                )

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
                raise ApiError(
                    422, f"input[{i}].text: expected a string", param="input", code="invalid_value"
                )
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

    async def on_worker(awaitable: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout=settings.request_timeout_s)
        except QueueFullError as exc:
            raise ApiError(
                503, str(exc), type_="overloaded", code="queue_full", headers={"Retry-After": "1"}
            ) from None
        except WorkerStoppedError as exc:
            raise ApiError(503, str(exc), type_="unavailable", code="stopping") from None
        except TimeoutError:
            raise ApiError(
                504,
                f"request took longer than request_timeout_s={settings.request_timeout_s}",
                type_="timeout",
                code="timeout",
            ) from None
        except ApiError:
            raise
        except Exception as exc:
            raise ApiError(500, f"model error: {type(exc).__name__}", type_="server_error") from exc

    async def classify_texts(guard: Guard, texts: list[str]) -> tuple[Any, list[tuple[Any, list[str]]]]:
        scores = await on_worker(batcher.score(guard.name, texts))
        return scores, guard.decide(scores)

    def score_dict(guard: Guard, row: Any) -> dict[str, float]:
        return {label: float(value) for label, value in zip(guard.classifier.labels, row, strict=True)}

    # -- routes ----------------------------------------------------------------------------------

    @app.post("/v1/classify", response_model=schemas.ClassifyResponse, responses=_ERRORS)
    async def classify(body: schemas.ClassifyRequest) -> schemas.ClassifyResponse:
        """Labels and per-label scores for each input, decided by the guard's policy."""
        guard = guard_for(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        check_texts(texts, "input")
        scores, decided = await classify_texts(guard, texts)
        task = guard.classifier.task
        return schemas.ClassifyResponse(
            model=guard.name,
            task=task.name,
            mode=task.mode,
            labels=guard.classifier.labels,
            policy={k: v for k, v in asdict(task.policy).items() if v not in (None, {})},
            results=[
                schemas.ClassifyResult(label=label, flagged=bool(flags), scores=score_dict(guard, row))
                for (label, flags), row in zip(decided, scores, strict=True)
            ],
        )

    @app.post("/v1/moderations", response_model=schemas.ModerationResponse, responses=_ERRORS)
    async def moderations(body: schemas.ModerationRequest) -> schemas.ModerationResponse:
        """The OpenAI moderation API: ``categories`` and ``category_scores`` keyed by the guard's labels.

        Multi-label guards report every category; single-label guards every label but the
        negative one, with ``flagged`` true when the policy picks a label other than it.
        """
        guard = guard_for(body.model)
        texts = moderation_texts(body.input)
        check_texts(texts, "input")
        scores, decided = await classify_texts(guard, texts)
        results = []
        for (_, flags), row in zip(decided, scores, strict=True):
            all_scores = score_dict(guard, row)
            results.append(
                schemas.ModerationResult(
                    flagged=bool(flags),
                    categories={name: name in flags for name in guard.categories},
                    category_scores={name: all_scores[name] for name in guard.categories},
                    category_applied_input_types={name: ["text"] for name in guard.categories},
                )
            )
        return schemas.ModerationResponse(id=f"modr-{uuid.uuid4().hex}", model=guard.name, results=results)

    @app.post("/v1/chat/completions", response_model=schemas.ChatResponse, responses=_ERRORS)
    async def chat(body: schemas.ChatRequest) -> schemas.ChatResponse:
        """Dual path: the guard screens the last user message and the reply; the base answers.

        The reply comes from the guard's base model with every adapter disabled (greedy, at most
        ``max_new_tokens``). A flagged turn gets the refusal, ``finish_reason: content_filter``
        and the categories that triggered it in ``guard``.
        """
        guard = guard_for(body.model)
        if body.stream:
            raise ApiError(400, "stream: streaming is not supported", param="stream", code="unsupported")
        check_texts([m.content for m in body.messages], "messages")
        users = [m.content for m in body.messages if m.role == "user"]
        if not users:
            raise ApiError(422, "messages: expected at least one user message", param="messages")
        wanted = body.max_completion_tokens or body.max_tokens or settings.max_new_tokens
        max_new = min(wanted, settings.max_new_tokens)
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        verdicts: list[schemas.GuardVerdict] = []

        async def screen(text: str, stage: str) -> bool:
            scores, decided = await classify_texts(guard, [text])
            flags = decided[0][1]
            verdicts.append(
                schemas.GuardVerdict(
                    stage=stage,  # type: ignore[arg-type]
                    flagged=bool(flags),
                    categories=flags,
                    scores=score_dict(guard, scores[0]),
                )
            )
            return bool(flags)

        def respond(content: str, finish: str, prompt: int = 0, completion: int = 0) -> schemas.ChatResponse:
            refused = finish == "content_filter"
            return schemas.ChatResponse(
                id=f"chatcmpl-{uuid.uuid4().hex}",
                created=int(time.time()),
                model=guard.name,
                choices=[
                    schemas.ChatChoice(
                        message=schemas.ChatChoiceMessage(
                            content=content, refusal=content if refused else None
                        ),
                        finish_reason=finish,  # type: ignore[arg-type]
                    )
                ],
                usage=schemas.ChatUsage(
                    prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
                ),
                guard=verdicts,
            )

        if await screen(users[-1], "input"):
            return respond(settings.refusal, "content_filter")
        reply = await on_worker(batcher.run(lambda: generate_reply(guard.backbone, messages, max_new)))
        if await screen(reply.text, "output"):
            return respond(settings.refusal, "content_filter", reply.prompt_tokens, reply.completion_tokens)
        return respond(reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens)

    @app.get("/v1/models", response_model=schemas.ModelList, responses=_ERRORS)
    async def models() -> schemas.ModelList:
        """The guards this server has loaded."""
        cards = [
            schemas.ModelCard(
                id=name,
                created=created,
                task=g.classifier.task.name,
                mode=g.classifier.task.mode,
                labels=g.classifier.labels,
                base=g.classifier.manifest.base,
                method=g.classifier.manifest.method,
            )
            for name, g in guards.items()
        ]
        return schemas.ModelList(data=cards)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """``ok`` once the models are loaded and the worker runs; 503 otherwise."""
        ok = batcher.alive
        body = {
            "status": "ok" if ok else "unavailable",
            "models": sorted(guards),
            "queue_depth": batcher.depth(),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text: requests, latency, batch sizes, queue depth and errors."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = {getattr(route, "path", "") for route in app.routes}
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    return app
