"""The threads engine: each request generates on its own thread; the event loop only relays deltas.

The loop stays free, so requests overlap and /health answers at once. But every thread runs its own
batch-of-one forward passes: on a CPU they compete for the same cores, and no step is shared, so total
throughput barely grows with concurrency (book/part6-llm-server/04-a-thread-per-request.md). That is the
gap continuous batching closes (05-continuous-batching.md).

Cancelling a request cannot stop a thread from outside (Python has no such thing). Instead each thread
checks its request's ``threading.Event`` between model steps and stops at the next one.
"""

from __future__ import annotations

import asyncio
import threading
import time

from corolab.serving.engine.base import Delta, QueueFullError
from corolab.serving.engine.common import BackendEngine
from corolab.serving.engine.handle import RequestHandle
from corolab.serving.engine.sequence import RequestSequence
from corolab.serving.params import SamplingParams


class ThreadsEngine(BackendEngine):
    kind = "threads"

    def submit(self, prompt: list[int], params: SamplingParams) -> RequestHandle:
        key = self._admit(prompt, params)
        if self._stats.running >= self.config.max_batch_size + self.config.max_waiting:
            raise QueueFullError(retry_after=1.0)
        stop = threading.Event()
        handle = RequestHandle(key, len(prompt), lambda handle: stop.set())
        loop = asyncio.get_running_loop()
        seq = RequestSequence(self.backend, len(prompt), params)

        settled = False  # read and written on the event loop only

        def settle() -> None:
            """Count the request as finished, once: with its last delta (so whoever reads that delta sees the
            stats already updated), or when its thread ends without one (cancelled, stopped)."""
            nonlocal settled
            if not settled:
                settled = True
                self._done(seq.completion_tokens)

        def post(item: Delta | BaseException, step: float | None = None) -> None:
            try:
                loop.call_soon_threadsafe(self._post, handle, item, step, settle)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                stop.set()

        def work() -> None:
            batch = None
            try:
                batch = self.backend.new_batch()
                token, step = batch.add(key, prompt, params), None
                while not stop.is_set():
                    for delta in seq.push(token):
                        post(delta, step)
                        step = None
                    if seq.finished:
                        return
                    started = time.perf_counter()
                    token = batch.step()[key]
                    step = time.perf_counter() - started
            except Exception as exc:  # reported to the request, not lost in a thread
                post(exc)
            finally:
                if batch is not None:
                    batch.remove(key)
                try:
                    loop.call_soon_threadsafe(settle)
                except RuntimeError:
                    pass

        self._stats.running += 1
        threading.Thread(target=work, name=f"corolab-request-{key}", daemon=True).start()
        return handle

    def _post(self, handle: RequestHandle, item: Delta | BaseException, step: float | None, settle) -> None:
        if isinstance(item, BaseException) or item.finish_reason is not None:
            settle()  # before the reader can see the last delta
        handle.put(item)
        if step is not None:
            self._emit_step(1, step)

    def _done(self, completion_tokens: int) -> None:
        self._stats.running -= 1
        self._finished(completion_tokens)
