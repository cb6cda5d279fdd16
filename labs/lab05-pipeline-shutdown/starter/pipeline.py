"""Lab 5: a producer/consumer pipeline with backpressure and graceful shutdown.

Run `corolab lab check 5` to see your score. Read the README's rules first.
"""

from __future__ import annotations

import asyncio  # noqa: F401  (you will need it)
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What became of one item: the work's return value, or the exception it raised."""

    item: Any
    value: Any = None
    error: Exception | None = None


class Pipeline:
    """One producer reads a source into a bounded queue; ``workers`` tasks take items from it."""

    def __init__(self, work: Callable[[Any], Awaitable[Any]], *, workers: int = 3, maxsize: int = 2) -> None:
        # TODO: workers < 1 or maxsize < 1 is a ValueError.
        self.work = work
        self.workers = workers
        self.maxsize = maxsize

    def stop(self) -> None:
        """Take no more items from the source; finish the ones already taken, then let run() return."""
        # TODO
        raise NotImplementedError

    async def run(self, source: AsyncIterable[Any]) -> list[Outcome]:
        """Process every item of ``source`` (until stop()); the outcomes come back in source order."""
        # This version works, but with one worker, no queue, no stop() and no error handling.
        # TODO: a producer task, an asyncio.Queue(maxsize), `workers` consumer tasks, a clean end.
        outcomes = []
        async for item in source:
            outcomes.append(Outcome(item, value=await self.work(item)))
        return outcomes
