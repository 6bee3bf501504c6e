"""Classify, moderations, models, health and metrics routes (the chat route is in ``chat.py``)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from guardtune.serve import schemas
from guardtune.serve.errors import ERROR_RESPONSES
from guardtune.serve.service import Service, moderation_texts, score_dict, service

router = APIRouter()
Shared = Annotated[Service, Depends(service)]


@router.post("/v1/classify", response_model=schemas.ClassifyResponse, responses=ERROR_RESPONSES)
async def classify(body: schemas.ClassifyRequest, svc: Shared) -> schemas.ClassifyResponse:
    """Labels and per-label scores for each input, decided by the guard's policy."""
    guard = svc.guard_for(body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    svc.check_texts(texts, "input")
    scores, decided = await svc.classify(guard, texts)
    task = guard.classifier.task
    return schemas.ClassifyResponse(
        model=guard.name,
        task=task.name,
        mode=task.mode,
        labels=guard.classifier.labels,
        policy={k: v for k, v in task.policy.model_dump().items() if v not in (None, {})},
        results=[
            schemas.ClassifyResult(label=label, flagged=bool(flags), scores=score_dict(guard, row))
            for (label, flags), row in zip(decided, scores, strict=True)
        ],
    )


@router.post("/v1/moderations", response_model=schemas.ModerationResponse, responses=ERROR_RESPONSES)
async def moderations(body: schemas.ModerationRequest, svc: Shared) -> schemas.ModerationResponse:
    """The OpenAI moderation API: ``categories`` and ``category_scores`` keyed by the guard's labels.

    Multi-label guards report every category; single-label guards every label but the
    negative one, with ``flagged`` true when the policy picks a label other than it.
    """
    guard = svc.guard_for(body.model)
    texts = moderation_texts(body.input)
    svc.check_texts(texts, "input")
    scores, decided = await svc.classify(guard, texts)
    categories = guard.classifier.task.flag_labels
    results = []
    for (_, flags), row in zip(decided, scores, strict=True):
        all_scores = score_dict(guard, row)
        results.append(
            schemas.ModerationResult(
                flagged=bool(flags),
                categories={name: name in flags for name in categories},
                category_scores={name: all_scores[name] for name in categories},
                category_applied_input_types={name: ["text"] for name in categories},
            )
        )
    return schemas.ModerationResponse(id=f"modr-{uuid.uuid4().hex}", model=guard.name, results=results)


@router.get("/v1/models", response_model=schemas.ModelList, responses=ERROR_RESPONSES)
async def models(svc: Shared) -> schemas.ModelList:
    """The guards this server has loaded."""
    cards = [
        schemas.ModelCard(
            id=name,
            created=svc.created,
            task=g.classifier.task.name,
            mode=g.classifier.task.mode,
            labels=g.classifier.labels,
            base=g.classifier.manifest.base,
            method=g.classifier.manifest.method,
        )
        for name, g in svc.guards.items()
    ]
    return schemas.ModelList(data=cards)


@router.get("/healthz")
async def healthz(svc: Shared) -> JSONResponse:
    """``ok`` once the models are loaded and the worker runs; 503 otherwise."""
    ok = svc.batcher.alive
    body = {
        "status": "ok" if ok else "unavailable",
        "models": sorted(svc.guards),
        "queue_depth": svc.batcher.depth(),
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def prometheus_metrics(svc: Shared) -> Response:
    """Prometheus text: requests, latency, batch sizes, queue depth and errors."""
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
