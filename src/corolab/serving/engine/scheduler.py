"""The batched engine's scheduling decision, as a plain object: which requests join, which leave, and how
many prompt tokens each step may prefill.

It holds no threads, no model and no clock, so a test (or a reader) can drive it step by step. The worker
thread in :mod:`corolab.serving.engine.batched` asks it for a :class:`StepPlan` before every model step, runs
the plan on the backend, and reports back what finished. The book drives it by hand in
book/part6-llm-server/05-continuous-batching.md.

The rules, in the order :meth:`Scheduler.plan` applies them:

1. Requests withdrawn since the last step leave now; their rows are dropped before the next forward pass.
2. Prompts already being prefilled continue first (oldest first), so no admitted request starves.
3. Waiting requests join, oldest first, while the batch has room (``max_batch_size`` rows, counting those
   still prefilling), its KV cache would stay within ``kv_cache_gib`` with them, and the step's prefill
   budget lasts. The cache is counted at its worst: every row as wide as the widest row's prompt plus its
   reply limit (rows are left-padded to a common width; :mod:`corolab.serving.backends.hf_batch` allocates no
   more). A request that does not fit waits, and so does everyone behind it: no overtaking, so a long
   request is never starved by short ones. One that could not fit even alone is refused before it queues
   (:meth:`corolab.serving.engine.common.BackendEngine._admit`, a 400); a lone request always joins.
4. A prompt longer than what is left of the budget is prefilled in chunks over several steps. The budget
   is what keeps one long prompt from stalling every running request's next token: each step prefills at
   most ``prefill_budget`` prompt tokens, then every running request decodes one token.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from corolab.serving.config import ServeConfig
from corolab.serving.engine.errors import QueueFullError

T = TypeVar("T")


@dataclass(eq=False)
class Entry(Generic[T]):
    """One request as the scheduler sees it: a key, a prompt length, and the engine's own payload."""

    key: int
    prompt_len: int
    payload: T
    reply_len: int = 0  # the most reply tokens it may generate (its max_tokens)
    prefilled: int = 0  # prompt tokens planned into the model's cache so far

    @property
    def columns(self) -> int:
        """The KV cache columns this request may come to need: its prompt and its whole reply."""
        return self.prompt_len + self.reply_len


@dataclass(frozen=True)
class Chunk(Generic[T]):
    """Prefill prompt tokens ``[start, end)`` of ``entry`` in this step."""

    entry: Entry[T]
    start: int
    end: int

    @property
    def last(self) -> bool:
        return self.end >= self.entry.prompt_len


@dataclass
class StepPlan(Generic[T]):
    drop: list[Entry[T]] = field(default_factory=list)      # withdrawn while in the model: free their rows
    prefill: list[Chunk[T]] = field(default_factory=list)   # prompt chunks to run this step
    decode: list[Entry[T]] = field(default_factory=list)    # running requests that decode one token after it


def cache_bytes(rows: int, columns: int, per_token: int) -> int:
    """A left-padded batch's KV cache: ``rows`` rows, each ``columns`` wide, ``per_token`` bytes a column."""
    return rows * columns * per_token


class Scheduler(Generic[T]):
    """FIFO admission into a bounded batch with a per-step prefill budget. Not thread-safe: the engine
    calls it under its own lock.

    Its four limits come from ``config`` (default: :class:`~corolab.serving.config.ServeConfig`'s) with any
    of them overridden by keyword, e.g. ``Scheduler(max_batch_size=4, prefill_budget=6)``; it has no
    defaults of its own."""

    def __init__(self, config: ServeConfig | None = None, /, **overrides: Any) -> None:
        config = replace(config or ServeConfig(), **overrides).validate()
        self.max_batch_size = config.max_batch_size
        self.max_waiting = config.max_waiting
        self.prefill_budget = config.prefill_budget
        self.kv_budget = config.kv_cache_bytes
        # What a token's keys and values take: the engine sets it once the model is loaded
        # (BackendInfo.kv_bytes_per_token). 0 counts no memory: rows alone limit the batch (the fake model).
        self.kv_bytes_per_token = 0
        self.waiting: deque[Entry[T]] = deque()
        self.prefilling: list[Entry[T]] = []
        self.running: dict[int, Entry[T]] = {}
        self._withdrawn: list[Entry[T]] = []
        # Called with every plan, on the thread that plans (the engine's worker, under its lock): for a reader
        # or a test that wants to see what each step did (Part VI ch. 10 records them). Keep them quick.
        self.plan_listeners: list[Callable[[StepPlan[T]], None]] = []

    def add(self, entry: Entry[T]) -> None:
        """Queue a request, or refuse it at once when the queue is full. Requests that the next step will
        admit (there is a free slot for each) do not count as queued: ``max_waiting=0`` refuses only
        requests that would have to wait for a slot, and a burst faster than the worker is not refused
        while slots are free."""
        free = self.max_batch_size - len(self.prefilling) - len(self.running)
        if len(self.waiting) >= self.max_waiting + max(0, free):
            raise QueueFullError(retry_after=1.0)
        self.waiting.append(entry)

    def cancel(self, key: int) -> Entry[T] | None:
        """Withdraw a request. A waiting one leaves at once and is returned (it never reached the model);
        one in the model leaves at the next :meth:`plan`."""
        for entry in self.waiting:
            if entry.key == key:
                self.waiting.remove(entry)
                return entry
        for entry in [*self.prefilling, *self.running.values()]:
            if entry.key == key:
                self._remove(entry)
                self._withdrawn.append(entry)
        return None

    def finish(self, key: int) -> Entry[T] | None:
        """A request ended (its last token, or its own failure): its slot is free for the next plan."""
        for entry in [*self.prefilling, *self.running.values()]:
            if entry.key == key:
                self._remove(entry)
                return entry
        return None

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running or self._withdrawn)

    def plan(self) -> StepPlan[T]:
        """Decide the next step. Assumes the planned chunks will run: a prompt whose last chunk is planned
        counts as running from now on, and decodes in this same step."""
        plan: StepPlan[T] = StepPlan(drop=self._withdrawn)
        self._withdrawn = []
        budget = self.prefill_budget
        for entry in list(self.prefilling):         # rule 2: unfinished prompts first
            if budget <= 0:
                break
            budget -= self._chunk(entry, budget, plan)
        rows = len(self.prefilling) + len(self.running)
        widest = max((e.columns for e in [*self.prefilling, *self.running.values()]), default=0)
        while self.waiting and budget > 0 and rows < self.max_batch_size:
            entry = self.waiting[0]                  # rule 3: oldest first, while there is room
            widest = max(widest, entry.columns)
            if rows and cache_bytes(rows + 1, widest, self.kv_bytes_per_token) > self.kv_budget:
                break                                # no overtaking: the rest wait behind it
            self.waiting.popleft()
            self.prefilling.append(entry)
            rows += 1
            budget -= self._chunk(entry, budget, plan)
        plan.decode = list(self.running.values())
        for listener in self.plan_listeners:
            listener(plan)
        return plan

    def _chunk(self, entry: Entry[T], budget: int, plan: StepPlan[T]) -> int:
        start = entry.prefilled
        end = min(entry.prompt_len, start + budget)  # rule 4: as much of the prompt as the budget allows
        chunk = Chunk(entry, start, end)
        plan.prefill.append(chunk)
        entry.prefilled = end
        if chunk.last:
            self.prefilling.remove(entry)
            self.running[entry.key] = entry
        return end - start

    def _remove(self, entry: Entry[T]) -> None:
        if entry in self.prefilling:
            self.prefilling.remove(entry)
        self.running.pop(entry.key, None)


__all__ = ["Chunk", "Entry", "Scheduler", "StepPlan", "cache_bytes"]
