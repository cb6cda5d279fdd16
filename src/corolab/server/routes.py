"""HTTP routes: models, chat completions (plain and streamed), health, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from corolab.engine.base import Delta, EngineError
from corolab.protocol import (
    ChatCompletion, ChatCompletionRequest, Choice, ModelCard, ModelList, ResponseMessage, Usage, completion_id, now,
)
from corolab.server.errors import APIError, error_body, from_engine_error
from corolab.server.sse import DONE, ChunkWriter
from corolab.server.state import ServerState, get_state

router = APIRouter()


def authorized(request: Request, authorization: str | None = Header(default=None)) -> ServerState:
    state = get_state(request)
    state.check_key(authorization)
    return state


@router.get("/v1/models")
async def list_models(state: ServerState = Depends(authorized)) -> ModelList:
    created = now()
    return ModelList(data=[ModelCard(id=name, created=created) for name in state.served_names])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = get_state(request)
    info = state.engine.info
    body = {"status": "ok", "model": info.model_id, "engine": info.engine}
    if state.load_error:  # the reason is in the server log; the body must not show paths or exception text
        return JSONResponse({**body, "status": "failed", "detail": "the model failed to load; see the server log"},
                            status_code=503)
    if not state.engine.ready:
        return JSONResponse({**body, "status": "loading"}, status_code=503)
    return JSONResponse(body)


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(get_state(request).metrics.render(), media_type="text/plain; version=0.0.4")


class FirstText:
    """Observes time to first token once: at the first delta that carries text (not the role, not nothing)."""

    def __init__(self, state: ServerState, arrived: float) -> None:
        self.histogram, self.arrived, self.seen = state.metrics.ttft, arrived, False

    def __call__(self, delta: Delta) -> None:
        if delta.text and not self.seen:
            self.seen = True
            self.histogram.observe(time.perf_counter() - self.arrived)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           state: ServerState = Depends(authorized)) -> Response:
    arrived = time.perf_counter()
    model = state.check_model(body.model)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    deltas = state.engine.generate(messages, state.sampling(body))
    try:
        first = await anext(deltas)  # refusals (429, 400, 503) happen here, before any byte is sent
    except EngineError as exc:
        await deltas.aclose()
        raise from_engine_error(exc) from None
    observe = FirstText(state, arrived)
    observe(first)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(model, first, deltas, observe, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    collect = asyncio.create_task(_collect(first, deltas, observe))
    gone = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not collect.done():  # the client left (or we were cancelled): cancelling frees the slot now
            collect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collect
        await deltas.aclose()
    if collect.cancelled():
        return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
    text, last = collect.result()
    usage = Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                  total_tokens=last.prompt_tokens + last.completion_tokens)
    return JSONResponse(ChatCompletion(
        id=completion_id(), created=now(), model=model, usage=usage,
        choices=[Choice(message=ResponseMessage(content=text), finish_reason=last.finish_reason)],
    ).model_dump(mode="json"))


async def _collect(first: Delta, deltas: AsyncIterator[Delta], observe: FirstText) -> tuple[str, Delta]:
    """The whole reply of a non-streamed request, and its last delta (finish reason and usage)."""
    parts, last = [first.text], first
    if first.finish_reason is None:
        async for delta in deltas:
            observe(delta)
            parts.append(delta.text)
            last = delta
            if delta.finish_reason is not None:
                break
    return "".join(parts), last


async def _disconnected(request: Request) -> None:
    """Return when the client hangs up. The body is already read, so the next ASGI message is the hang-up."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(model: str, first: Delta, deltas: AsyncIterator[Delta], observe: FirstText,
                  include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE body. If the client disconnects, Starlette cancels this generator; ``finally`` then closes
    the engine's iterator, which frees the request's batch slot at once."""
    writer = ChunkWriter(completion_id(), now(), model)
    try:
        yield writer.role()
        delta: Delta | None = first
        while delta is not None:
            observe(delta)
            if delta.text:
                yield writer.content(delta.text)
            if delta.finish_reason is not None:
                yield writer.finish(delta.finish_reason)
                if include_usage:
                    yield writer.usage(delta.prompt_tokens, delta.completion_tokens)
                break
            try:
                delta = await anext(deltas)
            except StopAsyncIteration:
                delta = None
            except EngineError as exc:  # mid-stream failure: an error event, then the end of the stream
                api = from_engine_error(exc)
                yield b"data: " + _json(error_body(api.status, api.message, api.param, api.code)) + b"\n\n"
                break
        yield DONE
    finally:
        await deltas.aclose()


def _json(obj: object) -> bytes:
    import json

    return json.dumps(obj, ensure_ascii=False).encode()


__all__ = ["router", "APIError"]
