"""Errors in OpenAI's shape and status, so clients (the official one included) raise the right exception.

Nothing internal leaks: messages are written for the caller; tracebacks go to the server log only.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corolab.serving.engine.base import (
    EngineError, EngineNotReadyError, QueueFullError, RequestFailedError, ShuttingDownError,
)
from corolab.serving.params import LimitError
from corolab.serving.protocol import ErrorDetail, ErrorResponse, describe_invalid

log = logging.getLogger("corolab.serving.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          408: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable", 500: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_detail(status: int, message: str, param: str | None = None, code: str | None = None) -> ErrorDetail:
    """OpenAI's error object for an HTTP status: the same for a JSON body, an SSE event or a websocket frame."""
    kind = _TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "server_error")
    return ErrorDetail(message=message, type=kind, param=param, code=code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return ErrorResponse(error=error_detail(status, message, param, code)).model_dump()


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def from_engine_error(exc: EngineError | LimitError) -> APIError:
    """Map the engine's refusals to HTTP: what the client did (400), or what the server can't do now."""
    if isinstance(exc, QueueFullError):
        retry = max(1, math.ceil(exc.retry_after))  # whole seconds, never 0, rounded up
        return APIError(429, str(exc), code="queue_full", headers={"Retry-After": str(retry)})
    if isinstance(exc, LimitError):  # the context-window rule (corolab.serving.params.check_fits)
        return APIError(400, str(exc), param=exc.param, code="context_length_exceeded")
    if isinstance(exc, ShuttingDownError):  # refused, or cut at the drain's deadline: come back to a live server
        retry = max(1, math.ceil(exc.retry_after))
        return APIError(503, str(exc), code="shutting_down", headers={"Retry-After": str(retry)})
    if isinstance(exc, EngineNotReadyError):
        return APIError(503, str(exc), code="model_loading", headers={"Retry-After": "5"})
    if isinstance(exc, RequestFailedError):  # this request alone failed; the cause goes to the log
        log.error("a request failed: %s", exc, exc_info=exc.__cause__ or exc)
        return APIError(500, str(exc), code="generation_failed")
    log.exception("engine error", exc_info=exc)
    return APIError(500, "the model failed while generating this reply", code="generation_failed")


def describe_errors(app: FastAPI) -> None:
    """Make the OpenAPI document say what the server does: invalid requests are 400 in OpenAI's error
    shape (FastAPI would document its own 422 and ``HTTPValidationError``)."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schemas["ErrorResponse"].pop("$defs", {}))
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses["400"] = {"description": "Invalid request", **error}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    describe_errors(app)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return await _api_error(request, from_engine_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [dict(e, loc=tuple(p for p in e.get("loc", ()) if p != "body")) for e in exc.errors()]
        if errors and errors[0].get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        else:
            param, message = describe_invalid(errors)
        return error_response(400, message, param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, message, code=getattr(exc, "code", None),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error")
