"""The naive engine: the model runs inside the request coroutine, on the event loop. On purpose.

This is the seed's server: a websocket handler that calls the model directly. Each decode step blocks the
event loop, so while one reply is being generated no other request, not even ``GET /health``, gets a
turn. Part VI measures exactly this, and the other two engines exist to fix it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

from corolab.engine.base import Delta, SamplingParams
from corolab.engine.common import BackendEngine
from corolab.engine.sequence import RequestSequence, encode_checked


class NaiveEngine(BackendEngine):
    kind = "naive"

    async def generate(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> AsyncIterator[Delta]:
        self._check_ready()
        prompt = encode_checked(self.backend, messages, params)
        seq = RequestSequence(self.backend, prompt, params)
        batch, key = self.backend.new_batch(), next(self._ids)
        self._stats.running += 1
        try:
            token = batch.add(key, prompt, params)       # blocks the loop: the flaw being taught
            while True:
                for delta in seq.push(token):
                    yield delta
                if seq.finished:
                    return
                started = time.perf_counter()
                token = batch.step()[key]                # blocks the loop again, every token
                self._emit_step(1, time.perf_counter() - started)
        finally:
            self._stats.running -= 1
            batch.remove(key)
            self._finished(seq.completion_tokens)
