"""The batched scheduler: continuous (iteration-level) batching, as in Orca and vLLM.

One worker thread owns the model. Each turn of its loop it

1. drops requests whose client went away (their slot frees at once),
2. admits waiting requests while there is room: each is prefilled alone and joins the running batch,
3. runs **one** decode step for every running request together, and
4. hands each request its new text, and removes those that finished.

A decode step on a small batch costs about as much as on one sequence (the weights are read once per
step either way), so tokens per second grow almost with the batch size. Requests join and leave between
steps, never waiting for the whole batch to finish: that is what "continuous" means.

The asyncio side never blocks. ``generate`` puts a request in a bounded waiting queue (full means
:class:`~corolab.engine.base.QueueFullError`, which the server turns into 429) and then awaits its own
``asyncio.Queue``. The worker delivers all deltas of one step in a single ``loop.call_soon_threadsafe``
call, so the cost of waking the loop does not grow with the batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from corolab.engine.base import Delta, EngineError, EngineNotReadyError, QueueFullError, SamplingParams
from corolab.engine.common import BackendEngine
from corolab.engine.sequence import RequestSequence, encode_checked


@dataclass(eq=False)
class _Request:
    key: int
    prompt: list[int]
    params: SamplingParams
    seq: RequestSequence
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class BatchedEngine(BackendEngine):
    kind = "batched"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cond = threading.Condition()  # guards _waiting, _cancelled, _stopping
        self._waiting: deque[_Request] = deque()
        self._cancelled: set[int] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        await super().start()
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._thread = threading.Thread(target=self._worker, name="corolab-batched", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        await super().stop()
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def stats(self):  # type: ignore[override]
        snapshot = super().stats()
        snapshot.waiting = len(self._waiting)
        return snapshot

    async def generate(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> AsyncIterator[Delta]:
        self._check_ready()
        prompt = encode_checked(self.backend, messages, params)
        request = _Request(next(self._ids), prompt, params, RequestSequence(self.backend, prompt, params))
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(retry_after=self._retry_after())
            self._waiting.append(request)
            self._cond.notify()
        done = False
        try:
            while True:
                item = await request.queue.get()
                if isinstance(item, BaseException):
                    done = True
                    if isinstance(item, EngineError):
                        raise item
                    raise EngineError("generation failed") from item
                done = item.finish_reason is not None
                yield item
                if done:
                    break
        finally:
            if not done:  # the client left: free the slot (or the place in the queue) now
                with self._cond:
                    try:
                        self._waiting.remove(request)
                    except ValueError:
                        self._cancelled.add(request.key)
                    self._cond.notify()

    def _retry_after(self) -> float:
        """How long a refused client should wait. A fixed second: long enough not to hammer the server,
        short enough that a queue which drains at one batch per reply's worth of steps has room again."""
        return 1.0

    # ---- the worker thread ------------------------------------------------------------------------------

    def _worker(self) -> None:
        active: dict[int, _Request] = {}
        try:
            self._run(active)
        except BaseException as exc:  # a bug here must not leave every client waiting forever
            with self._cond:
                left = list(active.values()) + list(self._waiting)
                self._waiting.clear()
                self._ready = False
            self._deliver_threadsafe([(r, exc) for r in left])
            raise

    def _run(self, active: dict[int, _Request]) -> None:
        batch = self.backend.new_batch()
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._cancelled or active):
                    self._cond.wait()
                if self._stopping:
                    break
                cancelled, self._cancelled = self._cancelled, set()
                for key in cancelled:
                    request = active.pop(key, None)
                    if request is not None:
                        batch.remove(key)
                        self._finished(request.seq.completion_tokens)
                joining = []
                while self._waiting and len(active) + len(joining) < self.max_batch_size:
                    joining.append(self._waiting.popleft())
            out: list[tuple[_Request, Delta | BaseException]] = []
            if joining:
                try:  # one prefill for everyone who arrived since the last step
                    first = batch.add_many([(r.key, r.prompt, r.params) for r in joining])
                except Exception as exc:
                    out.extend((r, exc) for r in joining)
                    first = {}
                for request in joining:
                    if request.key in first:
                        active[request.key] = request
                        self._accept(batch, active, request, first[request.key], out)
            self._stats.running = len(active)
            if out:  # first tokens go out now, not after the next step: time to first token matters
                self._deliver_threadsafe(out)
                out = []
            if active:
                started = time.perf_counter()
                try:
                    tokens = batch.step()
                except Exception as exc:  # a failed step fails every request in it, not the server
                    out.extend((r, exc) for r in active.values())
                    active.clear()
                    batch = self.backend.new_batch()
                    tokens = {}
                step = (len(tokens), time.perf_counter() - started) if tokens else None
                for key, token in tokens.items():
                    self._accept(batch, active, active[key], token, out)
                self._stats.running = len(active)
                self._deliver_threadsafe(out, step)
        # Stopping: whoever is still waiting for a reply gets an error instead of waiting forever.
        with self._cond:
            left = list(active.values()) + list(self._waiting)
            self._waiting.clear()
        for request in active.values():
            batch.remove(request.key)
        if left:
            self._deliver_threadsafe([(r, EngineNotReadyError("the engine stopped")) for r in left])

    def _accept(self, batch, active: dict[int, _Request], request: _Request, token: int,
                out: list[tuple[_Request, Delta | BaseException]]) -> None:
        out.extend((request, delta) for delta in request.seq.push(token))
        if request.seq.finished:
            del active[request.key]
            batch.remove(request.key)
            self._finished(request.seq.completion_tokens)

    def _deliver_threadsafe(self, out: list[tuple[_Request, Delta | BaseException]],
                            step: tuple[int, float] | None = None) -> None:
        """Hand a step's results to the event loop in one call (the listeners run there too, as in the
        other engines, so /metrics never reads half-updated numbers)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, out, step)
        except RuntimeError:  # the event loop is gone; nobody is listening
            pass

    def _deliver(self, out: list[tuple[_Request, Delta | BaseException]], step: tuple[int, float] | None) -> None:
        for request, item in out:
            request.queue.put_nowait(item)
        if step is not None:
            self._emit_step(*step)
