"""Lab 7 (solution): a small FastAPI app that stays responsive while it does slow work.

Three routes share one event loop: a slow lookup, a token stream over server-sent events, and a
websocket that streams words and listens for "stop" at the same time. None of them may hold the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse


def blocking_lookup(query: str) -> str:
    """Stands in for a blocking library call (a database driver, a model on a CPU)."""
    time.sleep(0.5)
    return query.upper()


def blocking_step(index: int) -> str:
    """Stands in for one blocking model step that produces one token."""
    time.sleep(0.01)
    return f"token{index}"


def blocking_words(prompt: str, tick: float) -> Iterator[str]:
    """Stands in for a model's token stream (ChatGLM-6B's ``model.stream_chat``): each word blocks ``tick`` s."""
    for word in prompt.split():
        time.sleep(tick)
        yield word


def sse_frame(data: str) -> str:
    """One server-sent event: a ``data:`` line, then the blank line that ends the event."""
    return f"data: {data}\n\n"


def create_app(lookup: Callable[[str], str] = blocking_lookup,
               step: Callable[[int], str] = blocking_step,
               tick: float = 0.01) -> FastAPI:
    """Build the app. ``lookup`` and ``step`` block their thread; ``tick`` paces the websocket's words."""
    app = FastAPI()
    app.state.produced = 0       # tokens made by every stream so far
    app.state.open_streams = 0   # streams whose generator has not finished (or been cancelled) yet

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/slow")
    async def slow(q: str) -> dict[str, str]:
        result = await asyncio.to_thread(lookup, q)   # the loop serves others while the thread waits
        return {"result": result}

    async def tokens(n: int) -> AsyncIterator[str]:
        app.state.open_streams += 1
        try:
            for i in range(n):
                token = await asyncio.to_thread(step, i)   # an await: a disconnect can cancel us here
                app.state.produced += 1
                yield sse_frame(token)
            yield sse_frame("[DONE]")
        finally:
            app.state.open_streams -= 1

    @app.get("/tokens")
    async def stream(n: int = 5) -> StreamingResponse:
        return StreamingResponse(tokens(n), media_type="text/event-stream")

    @app.websocket("/ws")
    async def words(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                prompt = await websocket.receive_text()
                await _stream_words(websocket, prompt, tick)
        except WebSocketDisconnect:
            pass

    return app


async def _stream_words(websocket: WebSocket, prompt: str, tick: float) -> None:
    """Send the prompt's words one per tick, then ``[end]``; a "stop" from the client ends it early with
    ``[stopped]``.

    Each word comes from a blocking generator, so each ``next()`` runs in a thread: the loop serves the other
    clients meanwhile. Reading and writing at once: a reader task waits for the client's next message while
    the writer writes. Whichever finishes first wins; the other is cancelled.
    """

    async def write() -> None:
        source = blocking_words(prompt, tick)
        while (word := await asyncio.to_thread(next, source, None)) is not None:   # the blocking step off the loop
            await websocket.send_text(word)

    async def read_stop() -> None:
        while (await websocket.receive_text()) != "stop":
            pass

    writer = asyncio.create_task(write())
    reader = asyncio.create_task(read_stop())
    try:
        done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (writer, reader):
            task.cancel()
        for task in (writer, reader):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if reader in done:
        reader.result()        # re-raises WebSocketDisconnect if the client left
        await websocket.send_text("[stopped]")
    else:
        writer.result()
        await websocket.send_text("[end]")


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
