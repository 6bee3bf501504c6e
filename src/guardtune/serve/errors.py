"""Error responses in the OpenAI shape, and the handlers that turn every failure into one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from guardtune.serve import schemas


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


async def send_error(send: Send, error: ApiError) -> None:
    """Send ``error`` straight through ASGI (for middleware, which runs outside FastAPI's handlers)."""
    response = error.response()
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


# The error statuses every route documents in /openapi.json.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
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


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
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


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return ApiError(exc.status_code, str(exc.detail), code="http_error", headers=exc.headers).response()


def install_error_handlers(app: FastAPI) -> None:
    """Answer API errors, bad request bodies (400 malformed JSON, 422 wrong fields) and HTTP
    errors such as 404 and 405 in the one OpenAI error shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
