"""``ws /ws/chat``: the seed's websocket protocol, fixed so that many clients are served at once.

Frames in: ``{"query": ..., "history": [[q, a], ...]}`` (or OpenAI-style ``messages``), plus the optional
sampling fields of the HTTP API. Frames out: a ``delta`` frame per piece of text with the whole
``response`` so far, then one ``final`` frame with the updated ``history`` to send back next time. A
malformed frame gets an ``error`` frame and the connection stays open for the next question.

The seed's handler awaited the model inline, so a second client waited for the first. Here every
connection is its own coroutine and the engine interleaves them. Each connection also runs a reader task
next to the reply, because a client that leaves must be noticed *while* the engine is silent (a request
waiting for a batch slot sends nothing): the reader sees the disconnect and the reply is cancelled, which
closes the engine's iterator and frees the request's slot at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from corolab.engine.base import EngineError
from corolab.protocol import Usage, WsDelta, WsError, WsFinal, WsRequest
from corolab.server.errors import APIError, error_detail, from_engine_error
from corolab.server.state import ServerState, get_ws_state

log = logging.getLogger("corolab.server")
router = APIRouter()

#: Frames a client may send ahead of the reply it is waiting for; then the reader stops reading.
MAX_PENDING_FRAMES = 16

def error_frame(status: int, message: str, code: str) -> str:
    return WsError(error=error_detail(status, message, code=code)).model_dump_json()


def parse_frame(raw: str | bytes) -> WsRequest | str:
    """The request in a frame, or the message of an error frame explaining what is wrong with it."""
    try:
        return WsRequest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "the frame is not valid JSON"
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first['msg']}" if where else first["msg"]


@router.websocket("/ws/chat")
async def ws_chat(websocket: WebSocket) -> None:
    state = get_ws_state(websocket)
    auth = websocket.headers.get("authorization")
    if auth is None and "api_key" in websocket.query_params:  # browsers cannot set headers on websockets
        auth = f"Bearer {websocket.query_params['api_key']}"
    try:
        state.check_key(auth)
    except APIError as exc:
        state.metrics.count("ws", exc.status)
        await websocket.close(code=1008, reason=exc.message[:120])
        return
    await websocket.accept()

    frames: asyncio.Queue[str | bytes | None] = asyncio.Queue(MAX_PENDING_FRAMES)
    reader = asyncio.create_task(_read(websocket, frames), name="ws-reader")
    try:
        while (raw := await frames.get()) is not None and not reader.done():
            frame = parse_frame(raw)
            if isinstance(frame, str):
                state.metrics.count("ws", 400)
                await websocket.send_text(error_frame(400, frame, "invalid_frame"))
                continue
            answer = asyncio.create_task(_answer(websocket, state, frame), name="ws-answer")
            await asyncio.wait({answer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():  # the client left mid-reply: cancelling closes the engine's iterator
                answer.cancel()
                state.metrics.count("ws", 499)
            try:
                await answer
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise  # we are being cancelled ourselves, not just the reply
    except WebSocketDisconnect:
        pass  # the client left while we were sending
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


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


async def _answer(websocket: WebSocket, state: ServerState, frame: WsRequest) -> None:
    deltas = state.engine.generate(frame.chat(), state.sampling(frame))
    response, last = "", None
    try:
        async for delta in deltas:
            last = delta
            if delta.text:
                response += delta.text
                await websocket.send_text(WsDelta(delta=delta.text, response=response).model_dump_json())
    except EngineError as exc:
        api = from_engine_error(exc)
        state.metrics.count("ws", api.status)
        await websocket.send_text(error_frame(api.status, api.message, api.code or "engine_error"))
        return
    except (WebSocketDisconnect, asyncio.CancelledError):
        raise
    except Exception:  # a bug must not kill the connection silently, nor leak its details to the client
        log.exception("websocket reply failed")
        state.metrics.count("ws", 500)
        await websocket.send_text(error_frame(500, "the server failed while generating this reply", "server_error"))
        return
    finally:
        await deltas.aclose()
    state.metrics.count("ws", 200)
    question = frame.query if frame.query is not None else frame.chat()[-1]["content"]
    history = [list(pair) for pair in frame.history] + [[question, response]]
    prompt, completion = (last.prompt_tokens, last.completion_tokens) if last else (0, 0)
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    finish = (last.finish_reason if last else None) or "stop"
    await websocket.send_text(WsFinal(response=response, history=history, finish_reason=finish,
                                      usage=usage).model_dump_json())
