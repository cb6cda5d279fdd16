"""The threads engine: each request generates on its own thread; the event loop only relays deltas.

The loop stays free, so requests overlap and /health answers at once. But every thread runs its own
batch-of-one forward passes: on a CPU they compete for the same cores, and no step is shared, so total
throughput barely grows with concurrency. That is the gap continuous batching closes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence

from corolab.engine.base import Delta, EngineError, QueueFullError, SamplingParams
from corolab.engine.common import BackendEngine
from corolab.engine.sequence import RequestSequence, encode_checked


class ThreadsEngine(BackendEngine):
    kind = "threads"

    async def generate(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> AsyncIterator[Delta]:
        self._check_ready()
        if self._stats.running >= self.max_batch_size + self.max_waiting:
            raise QueueFullError(retry_after=1.0)
        prompt = encode_checked(self.backend, messages, params)
        seq = RequestSequence(self.backend, prompt, params)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[Delta] | BaseException] = asyncio.Queue()
        cancelled = threading.Event()
        key = next(self._ids)

        def post(item: list[Delta] | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                cancelled.set()

        def step_done(seconds: float) -> None:
            try:
                loop.call_soon_threadsafe(self._emit_step, 1, seconds)
            except RuntimeError:
                cancelled.set()

        def work() -> None:
            batch = self.backend.new_batch()
            try:
                token = batch.add(key, prompt, params)
                while not cancelled.is_set():
                    deltas = seq.push(token)
                    if deltas:
                        post(deltas)
                    if seq.finished:
                        return
                    started = time.perf_counter()
                    token = batch.step()[key]
                    step_done(time.perf_counter() - started)
            except Exception as exc:  # reported to the request, not lost in a thread
                post(exc)
            finally:
                batch.remove(key)

        self._stats.running += 1
        thread = threading.Thread(target=work, name=f"corolab-request-{key}", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise EngineError("generation failed") from item
                for delta in item:
                    yield delta
                if item[-1].finish_reason is not None:
                    return
        finally:
            cancelled.set()  # the client left or the reply ended: the thread stops at its next step
            self._stats.running -= 1
            self._finished(seq.completion_tokens)
