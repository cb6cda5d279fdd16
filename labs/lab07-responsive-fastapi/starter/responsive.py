"""Lab 7 (starter): a small FastAPI app that freezes while it does slow work. Make it responsive.

Three routes share one event loop: a slow lookup, a token stream over server-sent events, and a
websocket that streams words. Each one, as written, blocks the loop while it works, so every other
request and every other client waits: the websocket is ChatGLM-6B's `websocket_api.py` in miniature.
Read README.md for what the graded tests check.
"""

from __future__ import annotations

import asyncio  # noqa: F401  (you will need it)
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
    """One server-sent event."""
    return f"data: {data}\n"


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
        return {"result": lookup(q)}

    def tokens(n: int) -> Iterator[str]:
        app.state.open_streams += 1
        try:
            for i in range(n):
                token = step(i)
                app.state.produced += 1
                yield sse_frame(token)
            yield sse_frame("[DONE]")
        finally:
            app.state.open_streams -= 1

    @app.get("/tokens")
    async def stream(n: int = 5) -> StreamingResponse:
        async def frames() -> AsyncIterator[str]:
            for frame in tokens(n):
                yield frame
        return StreamingResponse(frames(), media_type="text/event-stream")

    @app.websocket("/ws")
    async def words(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                prompt = await websocket.receive_text()
                for word in blocking_words(prompt, tick):   # each next() blocks the loop, as in ChatGLM-6B
                    await websocket.send_text(word)
                await websocket.send_text("[end]")
        except WebSocketDisconnect:
            pass

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
