"""The naive engine: the model runs inside the request coroutine, on the event loop. On purpose.

This is ChatGLM-6B's ``websocket_api.py`` server: a handler that calls the model directly. Each model step
blocks the event loop, so while one reply is being generated no other request, not even ``GET /health``,
gets a turn. The book measures exactly this (book/part6-llm-server/03-the-websocket-server-and-its-flaw.md),
and the other two engines exist to fix it.
"""

from __future__ import annotations

import time

from corolab.serving.engine.base import Delta, EngineError, RequestFailedError
from corolab.serving.engine.common import BackendEngine
from corolab.serving.engine.handle import RequestHandle
from corolab.serving.engine.sequence import RequestSequence
from corolab.serving.params import SamplingParams


class InlineHandle(RequestHandle):
    """A handle whose every ``__anext__`` runs the model right there, on the event loop."""

    def __init__(self, engine: NaiveEngine, key: int, prompt: list[int], params: SamplingParams) -> None:
        super().__init__(key, len(prompt), lambda handle: None)
        self._engine, self._prompt, self._params = engine, prompt, params
        self._seq = RequestSequence(engine.backend, len(prompt), params)
        self._batch = None
        self._pending: list[Delta] = []
        self._error: EngineError | None = None  # set by abort(): raised at the next step instead of running it

    async def __anext__(self) -> Delta:
        if self.finished:
            raise StopAsyncIteration
        if self._error is not None:
            self.finished = True
            self._close()
            raise self._error
        try:
            while not self._pending:
                self._pending = self._seq.push(self._next_token())  # blocks the loop: the flaw being taught
        except Exception as exc:  # this request fails alone, with a message the transport can show
            self.finished = True
            self._close()
            raise RequestFailedError("the model failed while generating this reply") from exc
        delta = self._pending.pop(0)
        if delta.finish_reason is not None:
            self.finished = True
            self._close()
        return delta

    def _next_token(self) -> int:
        engine = self._engine
        if self._batch is None:
            self._batch = engine.backend.new_batch()
            engine._stats.running += 1
            return self._batch.add(self.key, self._prompt, self._params)
        started = time.perf_counter()
        token = self._batch.step()[self.key]
        engine._emit_step(1, time.perf_counter() - started)
        return token

    def cancel(self) -> None:
        if not self.finished:
            self.cancelled = self.finished = True
            self._close()

    def abort(self, error: EngineError) -> None:
        if not (self.finished or self.aborted):
            self.aborted, self._error = True, error

    def _close(self) -> None:
        if self._batch is not None:
            self._batch.remove(self.key)
            self._batch = None
            self._engine._stats.running -= 1
            self._engine._finished(self._seq.completion_tokens)


class NaiveEngine(BackendEngine):
    kind = "naive"

    def submit(self, prompt: list[int], params: SamplingParams) -> RequestHandle:
        return InlineHandle(self, self._admit(prompt, params), prompt, params)
