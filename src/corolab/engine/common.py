"""What the three engines share: loading the backend off the loop, readiness, counters, request ids."""

from __future__ import annotations

import asyncio
import itertools

from corolab.backends.base import Backend
from corolab.engine.base import Engine, EngineInfo, EngineNotReadyError, EngineStats


class BackendEngine(Engine):
    kind = "base"

    def __init__(self, backend: Backend, *, max_batch_size: int = 32, max_waiting: int = 256) -> None:
        super().__init__()
        if max_batch_size < 1 or max_waiting < 0:
            raise ValueError("max_batch_size must be at least 1 and max_waiting at least 0")
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self._ready = False
        self._ids = itertools.count(1)
        self._stats = EngineStats()

    @property
    def info(self) -> EngineInfo:
        b = self.backend.info
        return EngineInfo(engine=self.kind, model_id=b.model_id, context_window=b.context_window, backend=b.backend)

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        """Load the model in a worker thread: the event loop keeps answering /health meanwhile."""
        await asyncio.to_thread(self.backend.load)
        self._ready = True

    async def stop(self) -> None:
        self._ready = False

    def stats(self) -> EngineStats:
        return EngineStats(**vars(self._stats))

    def _check_ready(self) -> None:
        if not self._ready:
            raise EngineNotReadyError("the model is still loading; try again shortly")

    def _finished(self, completion_tokens: int) -> None:
        self._stats.requests_finished += 1
        self._stats.tokens_generated += completion_tokens
