"""What a request body may cost: at most ``max_body_bytes`` (413), arriving within ``body_timeout`` seconds
once the headers are in (408). Both enforced while the body arrives, before it is read into memory.

A ``Content-Length`` over the cap is refused without passing anything to the app. A body sent in chunks
(no length, or a length that lies) is counted as it arrives, and refused the moment it passes the cap.

Either way the rest of the body is then read and thrown away (up to :data:`DRAIN_BYTES`, within the body's
deadline) before the 413 goes out. An answer sent while the client is still uploading is lost: closing a
connection with unread bytes makes the kernel send a reset, and a client that writes its whole body before
it reads (``httpx.AsyncClient``, ``openai.AsyncOpenAI``) then sees a broken connection instead of the 413.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException

from corolab.serving.server.errors import error_body

#: How much of a refused body is read and dropped so that the client can read the 413. A longer upload is
#: cut off: its client may see a reset instead of the answer.
DRAIN_BYTES = 32 << 20


class BodyLimit:
    """ASGI middleware for HTTP requests. Websocket frames are capped by uvicorn (``ws_max_size``, set from
    the same setting in :func:`corolab.serving.server.uvicorn_setup.uvicorn_config`); header deadlines are there too."""

    def __init__(self, app: Any, max_bytes: int, body_timeout: float) -> None:
        self.app, self.max_bytes, self.body_timeout = app, max_bytes, body_timeout

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _Body(receive, self.body_timeout)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # a client that waits for "100 Continue" has sent nothing yet: answer at once, read nothing
            waiting = headers.get(b"expect", b"").lower() == b"100-continue"
            whole = not waiting and int(declared) <= DRAIN_BYTES and await body.drain()
            await self._refuse(send, 413, self._too_large(), "request_too_large", close=not whole)
            return
        seen = 0
        started = False

        async def counted() -> dict:
            nonlocal seen
            message = await body.receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    whole = await body.drain()
                    raise _Refused(413, self._too_large(), "request_too_large", close=not whole)
            return message

        async def watched(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _Refused as exc:
            if not started:
                await self._refuse(send, exc.status_code, exc.detail, exc.code, close=True)

    def _too_large(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_bytes} bytes"

    @staticmethod
    async def _refuse(send: Callable, status: int, message: str, code: str, close: bool) -> None:
        payload = json.dumps(error_body(status, message, code=code)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + ([(b"connection", b"close")] if close else [])})
        await send({"type": "http.response.body", "body": payload})


class _Body:
    """The request's ``receive``, with the body's deadline while the body is still arriving."""

    def __init__(self, receive: Callable, timeout: float) -> None:
        self._receive, self.timeout = receive, timeout
        self.deadline = asyncio.get_running_loop().time() + timeout  # the clock starts with the headers in
        self.done = False

    async def receive(self) -> dict:
        if self.done:  # the body is in: what comes next is the hang-up, however long it takes
            return await self._receive()
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self._receive()
        except TimeoutError:
            raise _Refused(408, f"the request body did not arrive within {self.timeout:g} seconds",
                           "request_timeout", close=True) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
        return message

    async def drain(self) -> bool:
        """Read and drop the rest of the body; True if it all came, False if it passed :data:`DRAIN_BYTES`
        or its deadline."""
        dropped = 0
        try:
            while not self.done:
                dropped += len((await self.receive()).get("body", b""))
                if dropped > DRAIN_BYTES:
                    return False
        except _Refused:
            return False
        return True


class _Refused(HTTPException):
    """Raised from ``receive`` when the body passes the cap (413) or its deadline (408). An HTTP exception,
    so FastAPI's body reader lets it through (it turns other errors into a 400) and the app's handler
    answers in OpenAI's error shape, with ``code``. ``close``: the body is not all read, so the connection
    cannot carry another request (without ``Connection: close`` uvicorn would go on reading it)."""

    def __init__(self, status: int, message: str, code: str, close: bool) -> None:
        super().__init__(status, message, headers={"Connection": "close"} if close else None)
        self.code = code
