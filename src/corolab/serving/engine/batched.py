"""The batched engine: continuous (iteration-level) batching, as in Orca and vLLM.

Three pieces, each in its own place:

- :class:`~corolab.serving.engine.scheduler.Scheduler` decides, before every step, which requests leave, which
  prompt chunks to prefill and which requests decode. It is a plain object (no threads, no model).
- The worker thread (:meth:`BatchedEngine._run`) owns the model: it asks the scheduler for a plan, runs it
  on the backend's :class:`~corolab.serving.backends.base.Batch`, turns each request's token into text
  (:class:`~corolab.serving.engine.sequence.RequestSequence`), and hands the step's deltas to the event loop.
- The event loop side (:meth:`BatchedEngine.submit`) admits or refuses a request at once and returns a
  :class:`~corolab.serving.engine.handle.RequestHandle`; cancelling it withdraws the request from the scheduler.

A decode step on a small batch costs about as much as on one sequence (the weights are read once per
step either way), so tokens per second grow almost with the batch size. Requests join and leave between
steps, never waiting for the whole batch to finish: that is what "continuous" means. The worker delivers
all deltas of one step in a single ``loop.call_soon_threadsafe`` call, so the cost of waking the loop does
not grow with the batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from corolab.serving.backends.base import PrefillChunk
from corolab.serving.engine.base import Delta, EngineNotReadyError
from corolab.serving.engine.common import BackendEngine
from corolab.serving.engine.handle import RequestHandle
from corolab.serving.engine.scheduler import Entry, Scheduler, StepPlan
from corolab.serving.engine.sequence import RequestSequence
from corolab.serving.params import SamplingParams


@dataclass(eq=False)
class _Request:
    """What the worker keeps per request: the prompt, the settings, the text state, the handle."""

    prompt: list[int]
    params: SamplingParams
    seq: RequestSequence
    handle: RequestHandle


Out = list[tuple[RequestHandle, Delta | BaseException]]


class BatchedEngine(BackendEngine):
    kind = "batched"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cond = threading.Condition()  # guards the scheduler and _stopping
        self.scheduler: Scheduler[_Request] = Scheduler(self.config)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._tuner = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        await super().start()
        # This worker runs every step, so it can measure how many CPU threads serve them best
        # (corolab.serving.backends.cpu.torch_threads: every core on a quiet machine, fewer when something else wants one).
        self._tuner = self.backend.thread_tuner()
        with self._cond:  # known once the model is loaded: the scheduler counts the KV cache in it
            self.scheduler.kv_bytes_per_token = self.backend.info.kv_bytes_per_token
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
        with self._cond:
            snapshot.waiting = len(self.scheduler.waiting)
            snapshot.running = len(self.scheduler.running) + len(self.scheduler.prefilling)
        return snapshot

    def submit(self, prompt: list[int], params: SamplingParams) -> RequestHandle:
        key = self._admit(prompt, params)
        handle = RequestHandle(key, len(prompt), self._withdraw)
        request = _Request(prompt, params, RequestSequence(self.backend, len(prompt), params), handle)
        with self._cond:
            self.scheduler.add(Entry(key, len(prompt), request, reply_len=params.max_tokens))  # QueueFullError: 429
            self._cond.notify()
        return handle

    def _withdraw(self, handle: RequestHandle) -> None:
        """The client left or gave up: a queued request is dropped now, a running one at the next step."""
        with self._cond:
            self.scheduler.cancel(handle.key)
            self._cond.notify()

    # ---- the worker thread ------------------------------------------------------------------------------

    def _worker(self) -> None:
        batch = self.backend.new_batch()
        try:
            self._run(batch)
        except BaseException as exc:  # a bug here must not leave every client waiting forever
            self._fail_engine(exc)
            self._drain(EngineNotReadyError("the engine failed; see the server log"))

    def _run(self, batch) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self.scheduler.has_work):
                    self._cond.wait()
                if self._stopping:
                    break
                plan = self.scheduler.plan()
            batch = self._step(batch, plan)
        self._drain(EngineNotReadyError("the engine stopped"))

    def _step(self, batch, plan: StepPlan[_Request]):
        """Run one plan: drop, prefill, decode. Returns the batch to use next (a new one after a failed step)."""
        for entry in plan.drop:
            batch.remove(entry.key)
            self._finished(entry.payload.seq.completion_tokens)
        out: Out = []
        if self._tuner is not None:
            self._tuner.before_step()
        if plan.prefill:
            chunks = [PrefillChunk(c.entry.key, c.entry.payload.prompt, c.start, c.end, c.entry.payload.params)
                      for c in plan.prefill]
            try:
                outcomes = batch.prefill(chunks)
            except Exception as exc:  # the whole prefill failed: those requests fail, the running ones go on
                outcomes = {c.key: exc for c in chunks}
            for chunk in plan.prefill:
                if chunk.entry.key in outcomes:
                    self._accept(batch, chunk.entry, outcomes[chunk.entry.key], out)
            if out:  # first tokens go out now, not after the next step: time to first token matters
                self._deliver_threadsafe(out)
                out = []
        with self._cond:
            decoding = [e for e in plan.decode if e.key in self.scheduler.running]  # not ended or withdrawn
        if not decoding:
            return batch
        started = time.perf_counter()
        try:
            tokens = batch.step()
        except Exception as exc:  # a failed step fails every request in it, not the server
            for entry in decoding:
                self._accept(batch, entry, exc, out)
            self._deliver_threadsafe(out)
            return self.backend.new_batch()
        seconds = time.perf_counter() - started
        if self._tuner is not None:
            self._tuner.after_step()
        for entry in decoding:
            if entry.key in tokens:
                self._accept(batch, entry, tokens[entry.key], out)
        self._deliver_threadsafe(out, (len(tokens), seconds))
        return batch

    def _accept(self, batch, entry: Entry[_Request], outcome: int | BaseException, out: Out) -> None:
        """One request's token (or failure): its deltas go out; if it ended, its slot is freed."""
        request = entry.payload
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            out.extend((request.handle, delta) for delta in request.seq.push(outcome))
            done = request.seq.finished
        except Exception as exc:  # this request's own failure (its sampler, its text): it alone ends
            out.append((request.handle, exc))
            done = True
        if done:
            with self._cond:
                left = self.scheduler.finish(entry.key)
            batch.remove(entry.key)
            if left is not None:
                self._finished(request.seq.completion_tokens)

    def _drain(self, error: Exception) -> None:
        """Stopping or failed: whoever is still waiting for a reply gets an error instead of waiting forever."""
        with self._cond:
            s = self.scheduler
            left = [*s.waiting, *s.prefilling, *s.running.values()]
            s.waiting.clear()
            s.prefilling.clear()
            s.running.clear()
        if left:
            self._deliver_threadsafe([(e.payload.handle, error) for e in left])

    def _deliver_threadsafe(self, out: Out, step: tuple[int, float] | None = None) -> None:
        """Hand a step's results to the event loop in one call (the listeners run there too, so /metrics
        never reads half-updated numbers)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, out, step)
        except RuntimeError:  # the event loop is gone; nobody is listening
            pass

    def _deliver(self, out: Out, step: tuple[int, float] | None) -> None:
        for handle, item in out:
            handle.put(item)
        if step is not None:
            self._emit_step(*step)
