"""The guard server's app factory: a thin HTTP shell over :class:`guardtune.Classifier`.

Routes: ``POST /v1/classify``, ``POST /v1/moderations`` (OpenAI shapes), ``POST /v1/chat/completions``
(dual path: the base answers with adapters off, the guard screens both sides), ``GET /v1/models``,
``GET /healthz`` and ``GET /metrics``. Models are loaded before the app is built; all model work
runs on the micro-batcher's worker thread, never on the event loop. This module only assembles:
routes live in ``routes.py`` and ``chat.py``, errors in ``errors.py``, middleware in
``middleware.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from guardtune.errors import GuardtuneError
from guardtune.serve import chat, routes
from guardtune.serve.batcher import MicroBatcher
from guardtune.serve.errors import install_error_handlers
from guardtune.serve.guards import Guard
from guardtune.serve.metrics import ServeMetrics
from guardtune.serve.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from guardtune.serve.service import Service
from guardtune.serve.settings import ServeSettings


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
        return guards[name].classifier.predict_proba(
            texts, batch_size=settings.max_batch_size, max_batch_tokens=settings.max_batch_tokens
        )

    batcher = MicroBatcher(score, settings.max_batch_size, settings.max_wait_ms, settings.max_queue, metrics)

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
    app.state.service = Service(guards, settings, batcher, metrics, created=int(time.time()))
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.guards = guards
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(chat.router)

    paths = {getattr(route, "path", "") for route in app.routes}
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=paths)
    return app
