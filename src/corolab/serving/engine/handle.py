"""What admission hands back: one request's stream of deltas, and the way to withdraw it.

The engine side feeds a handle with :meth:`RequestHandle.put` on the event loop (a worker thread gets
there with ``loop.call_soon_threadsafe``). The transport side reads it with ``async for`` and may call
:meth:`RequestHandle.cancel` from any coroutine (a disconnect watcher, a reader task): the reader wakes up
at once, and the engine is told to free the request's slot or its place in the queue. The server, shutting
down, may end a request itself with :meth:`RequestHandle.abort`: the engine drops it the same way, and the
reader's next step raises the error, so the transport can tell its client why the reply stops there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from corolab.serving.engine.delta import Delta
from corolab.serving.engine.errors import EngineError, RequestFailedError

_CANCELLED = object()


class RequestHandle:
    """An admitted request. Iterate it for its deltas; the last one carries ``finish_reason``.

    ``on_cancel`` is the engine's hook, called once, on the event loop, when the request is withdrawn
    before it finished.
    """

    def __init__(self, key: int, prompt_tokens: int, on_cancel: Callable[[RequestHandle], None]) -> None:
        self.key = key
        self.prompt_tokens = prompt_tokens
        self.cancelled = False
        self.finished = False
        self.aborted = False  # ended by the server (abort), not by its client
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._on_cancel = on_cancel

    # -- the engine's side -------------------------------------------------------------------------------

    def put(self, item: Delta | BaseException) -> None:
        """Deliver a delta or a failure. Call on the event loop."""
        self._queue.put_nowait(item)

    # -- the transport's side ----------------------------------------------------------------------------

    def __aiter__(self) -> RequestHandle:
        return self

    async def __anext__(self) -> Delta:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _CANCELLED:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.finished = True
            if isinstance(item, EngineError):
                raise item
            raise RequestFailedError("the model failed while generating this reply") from item
        assert isinstance(item, Delta)
        if item.finish_reason is not None:
            self.finished = True
        return item

    def cancel(self) -> None:
        """Withdraw the request (idempotent; a no-op once it finished). Wakes a pending ``async for``."""
        if self.finished or self.cancelled:
            return
        self.cancelled = self.finished = True
        self._queue.put_nowait(_CANCELLED)
        if not self.aborted:  # an aborted request has left the engine already
            self._on_cancel(self)

    def abort(self, error: EngineError) -> None:
        """End the request from the server's side (a shutdown's deadline): the engine drops it as if it
        were withdrawn, and the reader gets every delta already delivered, then ``error``. A no-op once it
        finished, was withdrawn or was aborted."""
        if self.finished or self.cancelled or self.aborted:
            return
        self.aborted = True
        self._queue.put_nowait(error)
        self._on_cancel(self)

    async def aclose(self) -> None:
        self.cancel()


__all__ = ["RequestHandle"]
