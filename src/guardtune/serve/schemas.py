"""Request and response bodies of the guard server (pydantic; they shape /openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ClassifyRequest(BaseModel):
    model: str = Field(description="Name of a loaded guard (see GET /v1/models).")
    input: str | list[str] = Field(description="One text or a list of texts.")


class ClassifyResult(BaseModel):
    label: str | list[str] = Field(description="The decided label; a list of labels for multi-label guards.")
    flagged: bool
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    task: str
    mode: Literal["single", "multi"]
    labels: list[str]
    policy: dict[str, Any] = Field(description="The decision policy applied to the scores.")
    results: list[ClassifyResult]


class InputPart(BaseModel):
    """One part of a multi-modal moderation input, as OpenAI's moderation models take them."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description='"text" (an "image_url" part is refused: guards classify text).')
    text: str | None = Field(default=None, description="The text of a text part.")


class ModerationRequest(BaseModel):
    model: str | None = Field(
        default=None, description="Name of a loaded guard; optional when the server holds exactly one."
    )
    input: str | list[str | InputPart] = Field(
        description='One text, a list of texts, or a list of parts such as {"type": "text", "text": "..."}.'
    )


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use

    model: str = Field(description="The guard that screens the turn; its base model answers.")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False


class GuardVerdict(BaseModel):
    stage: Literal["input", "output"]
    flagged: bool
    categories: list[str]
    scores: dict[str, float]


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatChoiceMessage
    finish_reason: Literal["stop", "length", "content_filter"]


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage
    guard: list[GuardVerdict] = Field(description="The guard's verdicts on the user message and the reply.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "guardtune"
    task: str
    mode: Literal["single", "multi"]
    labels: list[str]
    base: str
    method: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
