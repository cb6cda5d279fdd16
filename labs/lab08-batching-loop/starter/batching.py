"""Lab 8: the batching loop. One scheduling step serves every running request with one model step.

Everything in this file is given except ``Scheduler.step``. The model is a fake whose step costs one tick
of a fake clock whether it serves one row or many: the property of a real model's decode step that makes
batching pay (chapter 4 measured it). Counting steps instead of seconds makes every test exact.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

EOS = 0  # the fake model's end-of-sequence token


def token_for(request_id: str, position: int) -> int:
    """The token the fake model gives request ``request_id`` at ``position``: fixed, never EOS."""
    return 1 + zlib.crc32(f"{request_id}:{position}".encode()) % 50_000


@dataclass(eq=False)
class Request:
    """One chat request: what it asked for and what it has received so far."""

    id: str
    max_tokens: int
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "length", "stop" (EOS) or "cancelled"; None while it is not done
    cancelled: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def deliver(self, token: int) -> None:
        """Hand the request one token of its reply (wakes its stream)."""
        self.tokens.append(token)
        self._changed.set()

    def finish(self, reason: str) -> None:
        """Mark the request done; its stream ends after the tokens it already has."""
        self.finish_reason = reason
        self._changed.set()


class FakeModel:
    """A model step over any number of rows, costing one tick of the fake clock however many rows it has.

    ``eos_at`` makes a request's reply end early: ``{"b": 3}`` gives request "b" the EOS token at
    position 3 (after three ordinary tokens). ``batches`` records the ids of the rows in every step.
    """

    def __init__(self, eos_at: dict[str, int] | None = None) -> None:
        self.eos_at = eos_at or {}
        self.batches: list[list[str]] = []

    @property
    def steps(self) -> int:
        """The fake clock: one tick per step, whatever its batch size."""
        return len(self.batches)

    def step(self, rows: Sequence[Request]) -> list[int]:
        """The next token of every row, in the order of ``rows``."""
        if not rows:
            raise ValueError("a model step needs at least one row")
        self.batches.append([row.id for row in rows])
        return [EOS if self.eos_at.get(row.id) == len(row.tokens) else token_for(row.id, len(row.tokens))
                for row in rows]


class Scheduler:
    """Continuous batching: requests join the running batch between steps and leave it when done."""

    def __init__(self, model: FakeModel, max_batch_size: int = 4) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._work = asyncio.Event()

    def submit(self, request: Request) -> Request:
        self.waiting.append(request)
        self._work.set()
        return request

    def cancel(self, request: Request) -> None:
        """The client left. The next step must not spend a row on this request."""
        request.cancelled = True

    def step(self) -> list[Request]:
        """One scheduling step. Return the requests that were in the model step (empty if none ran).

        1. Retire cancelled requests, running or waiting: ``finish("cancelled")``; their slots are free now.
        2. Admit waiting requests, oldest first, while fewer than ``max_batch_size`` are running.
        3. Run one model step over all running requests, and hand each one its own token:
           EOS means ``finish("stop")`` (EOS is not part of the reply); otherwise ``deliver`` it, and
           ``finish("length")`` once the request has ``max_tokens`` tokens.
        4. Retire the requests that finished, so that the next step does not include them.
        """
        # Your code here. The fake model is self.model; the queues are self.waiting and self.running.
        raise NotImplementedError("write the scheduling step")

    # -- the asynchronous side (given): a loop that steps while there is work, and one stream per request --

    async def run(self) -> None:
        """Step while there is work; sleep on an event when there is none. Cancel the task to stop it."""
        while True:
            if not self.running and not self.waiting:
                self._work.clear()
                await self._work.wait()
            self.step()
            await asyncio.sleep(0)  # a real model step runs in a thread; here, let the streams read

    async def stream(self, request: Request) -> AsyncIterator[int]:
        """The request's tokens as they arrive. Leaving early (``break``, cancellation) cancels it."""
        sent = 0
        try:
            while True:
                while sent < len(request.tokens):
                    yield request.tokens[sent]
                    sent += 1
                if request.finish_reason is not None:
                    return
                request._changed.clear()
                await request._changed.wait()
        finally:
            if request.finish_reason is None:
                self.cancel(request)
