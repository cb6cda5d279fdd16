"""HTTP routes: models, chat completions (plain and streamed), health, metrics.

A chat completion goes through :func:`~corolab.serving.server.admission.admit` first: every refusal (400, 429, 503)
is an ordinary JSON error, before any reply byte. Then the reply is either streamed as server-sent events
or collected whole. Either way the client is watched from admission on: a client that hangs up while its
request is still queued withdraws it, so it never costs a prefill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from corolab.serving.engine.base import EngineError
from corolab.serving.protocol import (
    ChatCompletion, ChatCompletionRequest, Choice, ErrorResponse, ModelCard, ModelList, ResponseMessage,
    chat_of, completion_id, now,
)
from corolab.serving.server.admission import admit
from corolab.serving.server.errors import error_body, from_engine_error
from corolab.serving.server.metrics import CONTENT_TYPE
from corolab.serving.server.replies import Reply
from corolab.serving.server.sse import DONE, ChunkWriter, event
from corolab.serving.server.state import ServerState, get_state

router = APIRouter()

ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (401, "Missing or invalid API key"), (404, "Unknown model"), (413, "Request body too large"),
    (429, "Queue full; retry after the Retry-After header's seconds"), (503, "Model loading or engine failed"))}


def authorized(request: Request, authorization: str | None = Header(default=None)) -> ServerState:
    """The API-key check, as a dependency. A plain ``def``: FastAPI runs it in its thread pool."""
    state = get_state(request)
    state.check_key(authorization)
    return state


@router.get("/v1/models", responses={401: ERRORS[401]})
async def list_models(state: ServerState = Depends(authorized)) -> ModelList:
    created = now()
    return ModelList(data=[ModelCard(id=name, created=created) for name in state.served_names])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 when the model is ready; 503 while it loads, while the server drains, or with the reason when the
    engine has failed."""
    state = get_state(request)
    info = state.engine.info
    body = {"status": "ok", "model": info.model_id, "engine": info.engine}
    if state.load_error:  # the reason is in the server log; the body must not show paths or exception text
        return JSONResponse({**body, "status": "failed", "detail": "the model failed to load; see the server log"},
                            status_code=503)
    if state.engine.failure is not None:
        return JSONResponse({**body, "status": "failed", "detail": f"the engine failed: {state.engine.failure}"},
                            status_code=503)
    if state.drain.draining:  # shutting down: a load balancer stops sending here
        return JSONResponse({**body, "status": "draining"}, status_code=503)
    if not state.engine.ready:
        return JSONResponse({**body, "status": "loading"}, status_code=503)
    return JSONResponse(body)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE)


@router.post("/v1/chat/completions", response_model=ChatCompletion,
             responses={**ERRORS, 200: {"content": {"text/event-stream": {}},
                                        "description": "A chat.completion, or with stream=true server-sent "
                                                       "chat.completion.chunk events ending in data: [DONE]"}})
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           state: ServerState = Depends(authorized)) -> Response:
    arrived = time.perf_counter()
    model = state.check_model(body.model)
    handle = await admit(state, chat_of(body.messages), body)
    reply = Reply(handle, arrived, state.metrics.ttft.observe)
    if body.stream:  # Starlette watches for the hang-up while it streams, and cancels _stream
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(model, reply, include_usage, state), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    collect = asyncio.create_task(reply.collect())
    gone = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not collect.done():  # the client left (or we were cancelled): withdraw the request now
            handle.cancel()
            with contextlib.suppress(asyncio.CancelledError, EngineError):
                await collect
        state.drain.release(handle)
    if handle.cancelled:
        return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
    try:
        collect.result()
    except EngineError as exc:
        raise from_engine_error(exc) from None
    return JSONResponse(ChatCompletion(
        id=completion_id(), created=now(), model=model, usage=reply.usage,
        choices=[Choice(message=ResponseMessage(content=reply.text), finish_reason=reply.finish_reason)],
    ).model_dump(mode="json"))


async def _disconnected(request: Request) -> None:
    """Return when the client hangs up. The body is already read, so the next ASGI message is the hang-up."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(model: str, reply: Reply, include_usage: bool, state: ServerState) -> AsyncIterator[bytes]:
    """The SSE body. If the client disconnects, Starlette cancels this generator; ``finally`` then withdraws
    the request, which frees its batch slot (or its place in the queue) at once. A reply the server ends
    (a shutdown's deadline) fails like any other: an error event, then ``[DONE]``."""
    writer = ChunkWriter(completion_id(), now(), model)
    try:
        try:
            yield writer.role()
            async for delta in reply.handle:
                reply.add(delta)
                if delta.text:
                    yield writer.content(delta.text)
            yield writer.finish(reply.finish_reason or "stop")
            if include_usage:
                yield writer.usage(reply.usage)
        except EngineError as exc:  # mid-stream failure: an error event, then the end of the stream
            api = from_engine_error(exc)
            yield event(json.dumps(error_body(api.status, api.message, api.param, api.code), ensure_ascii=False))
        finally:
            reply.handle.cancel()
        yield DONE
    finally:  # the last event is out (or the client left): a drain need not wait for this reply any more
        state.drain.release(reply.handle)


__all__ = ["authorized", "router"]
