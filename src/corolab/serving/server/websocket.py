"""Two websocket protocols on one engine, each connection its own coroutine, many at once.

- ``ws /ws`` speaks ChatGLM-6B's ``websocket_api.py`` exactly: ``{"query", "history"}`` in; frames
  ``{"response": <the whole reply so far>, "history": [...], "status": 202}`` while it streams, then
  ``{"status": 200}``. ChatGLM's own clients work unchanged. Its server awaited the model inline, so a
  second client waited for the first; here the engine interleaves them.
- ``ws /ws/chat`` is corolab's richer protocol: ``query``/``history`` or OpenAI-style ``messages``, the
  HTTP API's sampling fields, ``delta`` frames with the new text, and one ``final`` frame with the usage.

A frame that cannot be answered (not JSON, nested too deep, invalid fields, a prompt too long, a full
queue) gets an error frame and the connection stays open for the next question. A frame over
``max_body_bytes`` never reaches this module: uvicorn's websocket protocol refuses it as its header
arrives (close code 1009, "message too big"; :mod:`corolab.serving.server.uvicorn_setup`), before buffering it.

Each connection runs a reader task next to the reply, because a client that leaves must be noticed *while*
the engine is silent (a request waiting for a batch slot sends nothing): the reader sees the disconnect,
the reply is cancelled, and its request is withdrawn, which frees its slot or its place in the queue.

When the server shuts down (:mod:`corolab.serving.server.drain`), a connection with no reply running is
closed at once with code 1001 ("going away"); one with a reply running closes with 1001 after that reply's
last frame, or after its error frame if the drain's deadline ends it. A connection opened during the drain
is accepted and closed with 1001, so the client reads why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect

from corolab.serving.engine.base import EngineError
from corolab.serving.protocol import (
    GlmDone, GlmError, GlmFrame, GlmRequest, SamplingFields, WsDelta, WsError, WsFinal, WsRequest, describe_invalid,
    history_chat,
)
from corolab.serving.server.admission import admit
from corolab.serving.server.drain import GOING_AWAY
from corolab.serving.server.errors import APIError, error_detail, from_engine_error
from corolab.serving.server.replies import Reply
from corolab.serving.server.state import ServerState, get_ws_state

log = logging.getLogger("corolab.serving.server")
router = APIRouter()

#: Frames a client may send ahead of the reply it is waiting for; then the reader stops reading.
MAX_PENDING_FRAMES = 16

Send = Callable[[str], Awaitable[None]]


class Protocol:
    """How one websocket protocol reads a question and writes its reply; the connection logic is shared."""

    endpoint = "ws"
    request_model: type[SamplingFields] = WsRequest

    def chat(self, request) -> list[dict[str, str]]:
        return request.chat()

    def error(self, status: int, message: str, code: str) -> str:
        return WsError(error=error_detail(status, message, code=code)).model_dump_json()

    async def stream(self, request, reply: Reply, send: Send) -> None:
        async for delta in reply.handle:
            reply.add(delta)
            if delta.text:
                await send(WsDelta(delta=delta.text, response=reply.text).model_dump_json())
        question = request.query if request.query is not None else request.chat()[-1]["content"]
        history = [list(pair) for pair in request.history] + [[question, reply.text]]
        await send(WsFinal(response=reply.text, history=history, finish_reason=reply.finish_reason or "stop",
                           usage=reply.usage).model_dump_json())


class GlmProtocol(Protocol):
    """ChatGLM-6B's ``websocket_api.py`` frames."""

    endpoint = "ws_glm"
    request_model = GlmRequest

    def chat(self, request: GlmRequest) -> list[dict[str, str]]:
        return history_chat(request.history, request.query)

    def error(self, status: int, message: str, code: str) -> str:
        return GlmError(status=status, error=error_detail(status, message, code=code)).model_dump_json()

    async def stream(self, request: GlmRequest, reply: Reply, send: Send) -> None:
        history = [list(pair) for pair in request.history]
        async for delta in reply.handle:
            reply.add(delta)
            if delta.text:
                frame = GlmFrame(response=reply.text, history=[*history, [request.query, reply.text]])
                await send(frame.model_dump_json())
        await send(GlmDone().model_dump_json())


def parse_frame(raw: str | bytes, model: type[BaseModel], max_bytes: int) -> BaseModel | str:
    """The request in a frame, or the message of an error frame explaining what is wrong with it."""
    if len(raw) > max_bytes:
        return f"the frame has {len(raw)} bytes; this server's limit is {max_bytes}"
    try:
        data = json.loads(raw)
    except RecursionError:
        return "the frame is nested too deeply"
    except ValueError:  # not JSON, or not UTF-8
        return "the frame is not valid JSON"
    if not isinstance(data, dict):
        return "the frame must be a JSON object"
    try:
        return model.model_validate(data)
    except RecursionError:
        return "the frame is nested too deeply"
    except ValueError as exc:  # pydantic's ValidationError
        return describe_invalid(exc.errors() if hasattr(exc, "errors") else [])[1]


@router.websocket("/ws")
async def ws_glm(websocket: WebSocket) -> None:
    await serve(websocket, GlmProtocol())


@router.websocket("/ws/chat")
async def ws_chat(websocket: WebSocket) -> None:
    await serve(websocket, Protocol())


async def serve(websocket: WebSocket, protocol: Protocol) -> None:
    state = get_ws_state(websocket)
    auth = websocket.headers.get("authorization")
    if auth is None and "api_key" in websocket.query_params:  # browsers cannot set headers on websockets
        auth = f"Bearer {websocket.query_params['api_key']}"
    try:
        state.check_key(auth)
    except APIError as exc:
        state.metrics.count(protocol.endpoint, exc.status)
        await websocket.close(code=1008, reason=exc.message[:120])
        return
    await websocket.accept()
    with state.drain.websocket() as going_away:  # set when the server starts shutting down
        if going_away.is_set():  # accepted only to say why it closes: 1001, "going away"
            await _close_going_away(websocket)
            return
        await _converse(websocket, state, protocol, going_away)


async def _converse(websocket: WebSocket, state: ServerState, protocol: Protocol, going_away: asyncio.Event) -> None:
    """Answer question after question until the client leaves, or the server shuts down: then a reply that
    is running goes on (it ends with its last frame, or an error frame at the drain's deadline) and the
    connection closes with 1001."""
    frames: asyncio.Queue[str | bytes | None] = asyncio.Queue(MAX_PENDING_FRAMES)
    reader = asyncio.create_task(_read(websocket, frames), name="ws-reader")
    shutdown = asyncio.create_task(going_away.wait(), name="ws-going-away")
    question: asyncio.Future[str | bytes | None] | None = None
    try:
        while True:
            question = asyncio.ensure_future(frames.get())
            await asyncio.wait({question, shutdown}, return_when=asyncio.FIRST_COMPLETED)
            if not question.done():  # no question waiting, and the server is shutting down
                question.cancel()
                await _close_going_away(websocket)
                break
            if (raw := question.result()) is None or reader.done():
                break
            arrived = time.perf_counter()
            request = parse_frame(raw, protocol.request_model, state.config.max_body_bytes)
            if isinstance(request, str):
                state.metrics.count(protocol.endpoint, 400)
                await websocket.send_text(protocol.error(400, request, "invalid_frame"))
                continue
            answer = asyncio.create_task(_answer(websocket, state, protocol, request, arrived), name="ws-answer")
            await asyncio.wait({answer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():  # the client left mid-reply: cancelling withdraws the request
                answer.cancel()
                state.metrics.count(protocol.endpoint, 499)
            try:
                await answer
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise  # we are being cancelled ourselves, not just the reply
    except WebSocketDisconnect:
        pass  # the client left while we were sending
    finally:
        shutdown.cancel()
        if question is not None:
            question.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _close_going_away(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client may have left already
        await websocket.close(code=1001, reason=GOING_AWAY)


async def _read(websocket: WebSocket, frames: asyncio.Queue[str | bytes | None]) -> None:
    """Move incoming frames to ``frames``; ``None`` means the client is gone. Returning = disconnected."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            await frames.put(message.get("text") if message.get("text") is not None else message.get("bytes") or b"")
    finally:
        # the queue may be full; the consumer only needs one sentinel once it has drained the rest
        with contextlib.suppress(asyncio.QueueFull):
            frames.put_nowait(None)


async def _answer(websocket: WebSocket, state: ServerState, protocol: Protocol, request, arrived: float) -> None:
    handle = None
    try:
        handle = await admit(state, protocol.chat(request), request)
        reply = Reply(handle, arrived, state.metrics.ws_ttft.observe)
        await protocol.stream(request, reply, websocket.send_text)
    except APIError as exc:
        state.metrics.count(protocol.endpoint, exc.status)
        await websocket.send_text(protocol.error(exc.status, exc.message, exc.code or "invalid_request"))
        return
    except EngineError as exc:
        api = from_engine_error(exc)
        state.metrics.count(protocol.endpoint, api.status)
        await websocket.send_text(protocol.error(api.status, api.message, api.code or "engine_error"))
        return
    except WebSocketDisconnect:  # a send found the client gone before the handler saw it leave: the same 499
        state.metrics.count(protocol.endpoint, 499)
        raise
    except asyncio.CancelledError:  # the handler saw the client leave first and counted the 499 itself
        raise
    except Exception:  # a bug must not kill the connection silently, nor leak its details to the client
        log.exception("websocket reply failed")
        state.metrics.count(protocol.endpoint, 500)
        await websocket.send_text(protocol.error(500, "the server failed while generating this reply", "server_error"))
        return
    finally:
        if handle is not None:
            handle.cancel()
            state.drain.release(handle)
    state.metrics.count(protocol.endpoint, 200)
