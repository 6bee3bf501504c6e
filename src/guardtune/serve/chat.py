"""The dual-path chat completion: the guard screens both sides, the bare base model answers."""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Depends
from transformers import GenerationConfig, StoppingCriteriaList, StopStringCriteria

from guardtune.backbone import Backbone
from guardtune.serve import schemas
from guardtune.serve.errors import ERROR_RESPONSES, ApiError
from guardtune.serve.service import Service, score_dict, service

router = APIRouter()


# A base without a chat template reads a plain transcript, and a pretrained one goes on writing it:
# after its answer come invented turns ("user: i'm in 9th grade ..."), which are not the reply.
TRANSCRIPT_TURNS = tuple(
    f"\n{role}:" for name in ("user", "assistant", "system") for role in (name, name.capitalize())
)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], preamble: str = "") -> list[int]:
    """Token ids of a chat prompt: the tokenizer's chat template, or ``preamble`` and a plain
    transcript without one (the preamble is for a pretrained base, which answers a transcript
    only when it has seen one answered)."""
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = preamble + "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return list(tokenizer(text)["input_ids"])


# Building a StopStringCriteria reads and sorts the whole vocabulary (0.4 s a request on Gemma's
# 262k tokens), so it is built once per tokenizer (tokenizers hash by identity).
@functools.cache
def _turn_stop_strings(tokenizer: Any) -> StopStringCriteria:
    return StopStringCriteria(tokenizer, list(TRANSCRIPT_TURNS))


def turn_stops(tokenizer: Any) -> StoppingCriteriaList:
    """Stopping criteria that end generation at the start of a new transcript turn."""
    return StoppingCriteriaList([_turn_stop_strings(tokenizer)])


def cut_at_next_turn(text: str) -> tuple[str, bool]:
    """The assistant's turn of a transcript continuation, and whether another turn followed it."""
    ends = [i for i in (text.find(turn) for turn in TRANSCRIPT_TURNS) if i >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def generate_reply(
    backbone: Backbone, messages: list[dict[str, str]], max_new_tokens: int, preamble: str = ""
) -> Reply:
    """The base model's greedy reply with every adapter disabled.

    Without a chat template the prompt is ``preamble`` and a plain transcript, and generation stops
    where the base starts a turn of its own (a line opening with ``user:`` and the like); the
    reply is the text before it.

    A guard merged into its base is unmerged by PEFT on the first such request (see
    :func:`guardtune.merging.should_merge` for why that is exact enough).
    """
    tokenizer = backbone.tokenizer
    ids = prompt_ids(tokenizer, messages, preamble)
    input_ids = torch.tensor([ids], device=backbone.device)
    model: Any = backbone.model
    eos = model.generation_config.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    transcript = not has_chat_template(tokenizer)
    with torch.inference_mode(), backbone.peft_model.disable_adapter():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            stopping_criteria=turn_stops(tokenizer) if transcript else None,
        )
    new = output[0, len(ids) :].tolist()
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [tokenizer.eos_token_id])
    finished = bool(new) and new[-1] in eos_ids
    text = tokenizer.decode(new, skip_special_tokens=True)
    # A chat template ends a turn with its own token; a "User:" line inside such a reply is text.
    text, another_turn = cut_at_next_turn(text) if transcript else (text, False)
    stopped = finished or another_turn or len(new) < max_new_tokens
    return Reply(text.strip(), len(ids), len(new), "stop" if stopped else "length")


@router.post("/v1/chat/completions", response_model=schemas.ChatResponse, responses=ERROR_RESPONSES)
async def chat(body: schemas.ChatRequest, svc: Annotated[Service, Depends(service)]) -> schemas.ChatResponse:
    """Dual path: the guard screens the last user message and the reply; the base answers.

    The reply comes from the guard's base model with every adapter disabled (greedy, at most
    ``max_new_tokens``). A flagged turn gets the refusal, ``finish_reason: content_filter``
    and the categories that triggered it in ``guard``.
    """
    guard = svc.guard_for(body.model)
    settings = svc.settings
    if body.stream:
        raise ApiError(400, "stream: streaming is not supported", param="stream", code="unsupported")
    svc.check_texts([m.content for m in body.messages], "messages")
    users = [m.content for m in body.messages if m.role == "user"]
    if not users:
        raise ApiError(422, "messages: expected at least one user message", param="messages")
    wanted = body.max_completion_tokens or body.max_tokens or settings.max_new_tokens
    max_new = min(wanted, settings.max_new_tokens)
    messages = [{"role": m.role, "content": m.content} for m in body.messages]
    verdicts: list[schemas.GuardVerdict] = []

    async def screen(text: str, stage: str) -> bool:
        scores, decided = await svc.classify(guard, [text])
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
                    message=schemas.ChatChoiceMessage(content=content, refusal=content if refused else None),
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
    reply = await svc.on_worker(
        svc.batcher.run(lambda: generate_reply(guard.backbone, messages, max_new, settings.chat_preamble))
    )
    if await screen(reply.text, "output"):
        return respond(settings.refusal, "content_filter", reply.prompt_tokens, reply.completion_tokens)
    return respond(reply.text, reply.finish_reason, reply.prompt_tokens, reply.completion_tokens)
