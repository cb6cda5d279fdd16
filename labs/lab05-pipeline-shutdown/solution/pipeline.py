"""Lab 5: a producer/consumer pipeline with backpressure and graceful shutdown (instructor solution)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

_DONE = object()   # the sentinel that tells one worker there is nothing more to come


@dataclass(frozen=True)
class Outcome:
    """What became of one item: the work's return value, or the exception it raised."""

    item: Any
    value: Any = None
    error: Exception | None = None


class Pipeline:
    """One producer reads a source into a bounded queue; ``workers`` tasks take items from it."""

    def __init__(self, work: Callable[[Any], Awaitable[Any]], *, workers: int = 3, maxsize: int = 2) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.work = work
        self.workers = workers
        self.maxsize = maxsize
        self._stopping = False

    def stop(self) -> None:
        """Take no more items from the source; finish the ones already taken, then let run() return."""
        self._stopping = True

    async def run(self, source: AsyncIterable[Any]) -> list[Outcome]:
        """Process every item of ``source`` (until stop()); the outcomes come back in source order."""
        queue: asyncio.Queue = asyncio.Queue(self.maxsize)
        outcomes: dict[int, Outcome] = {}

        async def produce() -> None:
            items = aiter(source)
            index = 0
            try:
                while not self._stopping:          # checked before taking an item, so none is dropped
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        break
                    await queue.put((index, item))  # waits while the queue is full: backpressure
                    index += 1
            finally:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    await aclose()                  # the source's own cleanup runs now, not at GC time
            for _ in range(self.workers):
                await queue.put(_DONE)

        async def consume() -> None:
            while (entry := await queue.get()) is not _DONE:
                index, item = entry
                try:
                    outcomes[index] = Outcome(item, value=await self.work(item))
                except Exception as error:          # one bad item must not stop the others
                    outcomes[index] = Outcome(item, error=error)

        async with asyncio.TaskGroup() as group:   # cancelling run() cancels all of them
            group.create_task(produce())
            for _ in range(self.workers):
                group.create_task(consume())
        return [outcomes[index] for index in sorted(outcomes)]
