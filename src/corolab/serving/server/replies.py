"""One reply collector for every transport: the text so far, the finish reason, the usage, and the time to
first token, observed the same way for a non-streamed reply, an SSE stream and a websocket."""

from __future__ import annotations

import time
from collections.abc import Callable

from corolab.serving.engine.base import Delta
from corolab.serving.engine.handle import RequestHandle
from corolab.serving.protocol import Usage


class Reply:
    """Feed it every delta of one reply (:meth:`add`); read what it saw."""

    def __init__(self, handle: RequestHandle, arrived: float, on_first_text: Callable[[float], None] | None = None):
        self.handle = handle
        self.arrived = arrived                # time.perf_counter() when the request arrived
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.ttft: float | None = None        # seconds from arrival to the first delta with text
        self._on_first_text = on_first_text

    def add(self, delta: Delta) -> Delta:
        if delta.text:
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.arrived
                if self._on_first_text is not None:
                    self._on_first_text(self.ttft)
            self.parts.append(delta.text)
        self.completion_tokens = delta.completion_tokens
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        return delta

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def usage(self) -> Usage:
        prompt = self.handle.prompt_tokens
        return Usage(prompt_tokens=prompt, completion_tokens=self.completion_tokens,
                     total_tokens=prompt + self.completion_tokens)

    async def collect(self) -> Reply:
        """Read the handle to its end (raises the engine's error if the reply fails)."""
        async for delta in self.handle:
            self.add(delta)
        return self
