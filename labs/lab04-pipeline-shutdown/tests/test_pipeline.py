"""Graded tests for Lab 4: order, overlap, backpressure, failures, and three ways of ending."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from corolab.labs.grading import points

LIMIT = 10.0  # seconds any one test may take before it counts as hanging


def run(body: Callable[[], Awaitable[None]]) -> None:
    """Run one async test body; a hang fails this test only."""
    asyncio.run(asyncio.wait_for(body(), LIMIT))


class Source:
    """An async source of 0, 1, 2, ... that counts what was taken from it and notices being closed."""

    def __init__(self, count: int | None = None) -> None:
        self.count = count          # None: endless
        self.taken = 0
        self.closed = False

    async def items(self):
        try:
            i = 0
            while self.count is None or i < self.count:
                await asyncio.sleep(0)       # a real source waits for its data; this one yields once
                self.taken += 1
                yield i
                i += 1
        finally:
            self.closed = True


async def ticks(n: int = 200) -> None:
    """Let every runnable task run for a while (loop iterations, not wall time)."""
    for _ in range(n):
        await asyncio.sleep(0)


def leftover_tasks(before: set[asyncio.Task]) -> set[asyncio.Task]:
    return {task for task in asyncio.all_tasks() - before if not task.done()}


@points(3, hint="Tag each item with its index when you queue it; sort the outcomes by index at the end.")
def test_outcomes_in_source_order(student) -> None:
    async def work(item: int) -> int:
        for _ in range(10 - item):          # later items finish first
            await asyncio.sleep(0)
        return item * 2

    async def body() -> None:
        outcomes = await student.Pipeline(work, workers=3, maxsize=2).run(Source(10).items())
        assert [o.item for o in outcomes] == list(range(10))
        assert [o.value for o in outcomes] == [2 * i for i in range(10)]
        assert all(o.error is None for o in outcomes)

    run(body)


@points(3, hint="Start `workers` consumer tasks that each loop on `await queue.get()`.")
def test_workers_run_concurrently(student) -> None:
    active = max_active = 0
    changed = asyncio.Condition()

    async def work(item: int) -> int:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        async with changed:
            changed.notify_all()
            await changed.wait_for(lambda: max_active >= 3)   # only three at once get past here
        active -= 1
        return item

    async def body() -> None:
        outcomes = await student.Pipeline(work, workers=3, maxsize=2).run(Source(9).items())
        assert len(outcomes) == 9
        assert max_active == 3

    run(body)


@points(3, hint="Use asyncio.Queue(maxsize): `await queue.put()` then waits while the queue is full.")
def test_a_full_queue_holds_the_producer_back(student) -> None:
    release = asyncio.Event()
    started = 0

    async def work(item: int) -> int:
        nonlocal started
        started += 1
        await release.wait()
        return item

    async def body() -> None:
        source = Source()                   # endless
        pipeline = student.Pipeline(work, workers=2, maxsize=3)
        task = asyncio.create_task(pipeline.run(source.items()))
        await ticks()                       # both workers are stuck; let the producer run ahead if it can
        assert started == 2
        # 2 in the workers' hands + 3 in the queue + 1 the producer holds while it waits to put it:
        assert source.taken <= 2 + 3 + 1, f"the producer took {source.taken} items while the workers were stuck"
        pipeline.stop()
        release.set()
        outcomes = await task
        assert len(outcomes) == source.taken

    run(body)


@points(2, hint="Catch Exception around `await self.work(item)` and store it in Outcome(item, error=...).")
def test_a_failing_item_does_not_stop_the_pipeline(student) -> None:
    async def work(item: int) -> int:
        if item == 3:
            raise ValueError("item 3 is bad")
        return item

    async def body() -> None:
        outcomes = await student.Pipeline(work, workers=2, maxsize=2).run(Source(8).items())
        assert [o.item for o in outcomes] == list(range(8))
        assert isinstance(outcomes[3].error, ValueError)
        assert [o.value for o in outcomes if o.error is None] == [0, 1, 2, 4, 5, 6, 7]

    run(body)


@points(3, hint="At the end of the source put one sentinel per worker; each worker returns when it gets one.")
def test_the_end_of_the_source_ends_every_task(student) -> None:
    async def work(item: int) -> int:
        await asyncio.sleep(0)
        return item

    async def body() -> None:
        before = asyncio.all_tasks()
        source = Source(7)
        outcomes = await student.Pipeline(work, workers=3, maxsize=2).run(source.items())
        assert len(outcomes) == 7
        assert leftover_tasks(before) == set(), "run() returned but left tasks running"
        assert source.closed

    run(body)


@points(3, hint="Check the stop flag before taking the next item, never after; close the source with aclose().")
def test_stop_finishes_every_item_taken_and_closes_the_source(student) -> None:
    async def body() -> None:
        before = asyncio.all_tasks()
        source = Source()                   # endless: only stop() ends this run
        pipeline = None

        async def work(item: int) -> int:
            await asyncio.sleep(0)
            if item == 4:
                pipeline.stop()
            return item

        pipeline = student.Pipeline(work, workers=3, maxsize=2)
        outcomes = await pipeline.run(source.items())
        assert len(outcomes) >= 5
        assert [o.item for o in outcomes] == list(range(len(outcomes)))
        assert len(outcomes) == source.taken, f"took {source.taken} items but finished {len(outcomes)}"
        assert source.closed, "the source generator was not closed"
        assert leftover_tasks(before) == set()

    run(body)


@points(2, hint="Run the tasks in an asyncio.TaskGroup (or cancel them yourself in a finally) and let CancelledError out.")
def test_cancelling_run_cancels_everything(student) -> None:
    started = asyncio.Event()
    count = 0

    async def work(item: int) -> int:
        nonlocal count
        count += 1
        if count == 2:
            started.set()
        await asyncio.Event().wait()        # never finishes
        return item

    async def body() -> None:
        before = asyncio.all_tasks()
        source = Source()
        task = asyncio.create_task(student.Pipeline(work, workers=2, maxsize=2).run(source.items()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await ticks(5)                      # let cancelled tasks run their cleanup
        assert leftover_tasks(before) == set(), "tasks still running after run() was cancelled"
        assert source.closed

    run(body)


@points(1, hint="Raise ValueError in __init__ when workers or maxsize is below 1.")
def test_bad_arguments_are_refused(student) -> None:
    async def work(item: int) -> int:
        return item

    for kwargs in ({"workers": 0}, {"maxsize": 0}, {"workers": -1}):
        with pytest.raises(ValueError):
            student.Pipeline(work, **kwargs)
