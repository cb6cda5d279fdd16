"""Graded tests for Lab 5: order, overlap, backpressure, failures, and three ways of ending.

Each test draws its items, worker counts and queue sizes from ``rng`` (a new seed every grading run) and
``observe``s what your pipeline produced from them; the grader compares that with the reference solution.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from corolab.labs.grading import points
from corolab.labs.seeded import words

LIMIT = 10.0  # seconds any one test may take before it counts as hanging


def run(body: Callable[[], Awaitable[None]], waiting_for: str) -> None:
    """Run one async test body; a hang fails this test only, with a message that says what never happened."""

    async def bounded() -> None:
        try:
            await asyncio.wait_for(body(), LIMIT)
        except TimeoutError:
            pytest.fail(f"{waiting_for} within {LIMIT:g} s", pytrace=False)

    asyncio.run(bounded())


class Source:
    """An async source of the given items (endless if ``endless``: it then draws more from ``rng``),
    which counts what was taken from it and notices being closed."""

    def __init__(self, items: list[str], rng: random.Random | None = None) -> None:
        self.items = list(items)
        self.rng = rng              # set: endless, the items go on with more random words
        self.taken = 0
        self.closed = False

    async def stream(self):
        try:
            i = 0
            while self.rng is not None or i < len(self.items):
                if i == len(self.items):
                    self.items += words(self.rng, 1)
                await asyncio.sleep(0)       # a real source waits for its data; this one yields once
                self.taken += 1
                yield self.items[i]
                i += 1
        finally:
            self.closed = True


async def ticks(n: int = 200) -> None:
    """Let every runnable task run for a while (loop iterations, not wall time)."""
    for _ in range(n):
        await asyncio.sleep(0)


def stop(pipeline) -> None:
    try:
        pipeline.stop()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"expected stop() to ask run() to finish early; it raised {type(exc).__name__}", pytrace=False)


def leftover_tasks(before: set[asyncio.Task]) -> list[str]:
    return sorted(task.get_name() for task in asyncio.all_tasks() - before if not task.done())


def summary(outcomes) -> list[list]:
    """Each outcome as [item, value, name of the error's type or None]."""
    return [[o.item, o.value, None if o.error is None else type(o.error).__name__] for o in outcomes]


@points(3, hint="Tag each item with its index when you queue it; sort the outcomes by index at the end.")
def test_outcomes_in_source_order(student, rng, observe) -> None:
    items = words(rng, rng.randint(6, 12))
    delay = {item: rng.randrange(0, 8) for item in items}
    delay[items[0]] = 20                     # the first item finishes after the next ones

    async def work(item: str) -> str:
        for _ in range(delay[item]):
            await asyncio.sleep(0)
        return item[::-1]

    async def body() -> None:
        outcomes = await student.Pipeline(work, workers=3, maxsize=2).run(Source(items).stream())
        got = summary(outcomes)
        observe(got)
        expected = [[item, item[::-1], None] for item in items]
        assert got == expected, f"expected the outcomes [item, value, error] in source order {expected}, got {got}"

    run(body, "run() did not return")


@points(3, hint="Start `workers` consumer tasks that each loop on `await queue.get()`.")
def test_workers_run_concurrently(student, rng, observe) -> None:
    workers = rng.randint(2, 5)
    items = words(rng, rng.randint(2 * workers, 3 * workers))
    active = max_active = 0
    in_work: list[str] = []
    first_together: list[str] = []          # the items in work at the moment `workers` of them overlap

    async def work(item: str) -> str:
        nonlocal active, max_active
        active += 1
        in_work.append(item)
        if active > max_active:
            max_active = active
            if active == workers:
                first_together.extend(in_work)
        for _ in range(100):                # wait (in loop turns) for the others to start too
            if max_active >= workers:
                break
            await asyncio.sleep(0)
        active -= 1
        in_work.remove(item)
        return item.upper()

    async def body() -> None:
        outcomes = await student.Pipeline(work, workers=workers, maxsize=2).run(Source(items).stream())
        observe([max_active, sorted(first_together), [o.value for o in outcomes]])
        assert max_active == workers, (f"expected {workers} items in work at the same time "
                                       f"(workers={workers}), saw at most {max_active}")
        values, expected = [o.value for o in outcomes], [item.upper() for item in items]
        assert values == expected, f"expected the values {expected} in source order, got {values}"

    run(body, "run() did not return")


@points(3, hint="Use asyncio.Queue(maxsize): `await queue.put()` then waits while the queue is full.")
def test_a_full_queue_holds_the_producer_back(student, rng, observe) -> None:
    workers, maxsize = rng.randint(1, 3), rng.randint(1, 4)
    release = asyncio.Event()
    started: list[str] = []

    async def work(item: str) -> str:
        started.append(item)
        await release.wait()
        return item

    async def body() -> None:
        source = Source(words(rng, 3), rng)         # endless: it goes on with more random words
        pipeline = student.Pipeline(work, workers=workers, maxsize=maxsize)
        task = asyncio.create_task(pipeline.run(source.stream()))
        await ticks()                       # every worker is stuck; let the producer run ahead if it can
        taken_while_stuck = source.taken
        in_work = sorted(started)
        stop(pipeline)
        release.set()
        outcomes = await task
        # `workers` in the workers' hands + `maxsize` in the queue + 1 the producer holds while it waits:
        bound = workers + maxsize + 1
        observe([in_work, taken_while_stuck <= bound, [o.item for o in outcomes] == source.items[:source.taken]])
        assert in_work == sorted(source.items[:workers]), (
            f"expected the first {workers} items in work (workers={workers}), got {in_work}")
        assert taken_while_stuck <= bound, (f"the producer took {taken_while_stuck} items while the workers were "
                                            f"stuck; expected at most {bound} (workers={workers}, maxsize={maxsize})")
        assert [o.item for o in outcomes] == source.items[:source.taken], (
            f"after stop(), expected one outcome per item taken ({source.taken}), got {len(outcomes)}")

    run(body, "run() did not return after stop() and the workers' release")


@points(2, hint="Catch Exception around `await self.work(item)` and store it in Outcome(item, error=...).")
def test_a_failing_item_does_not_stop_the_pipeline(student, rng, observe) -> None:
    items = words(rng, rng.randint(5, 10))
    bad = set(rng.sample(items, rng.randint(1, 2)))
    errors = {item: rng.choice([ValueError, KeyError, RuntimeError]) for item in bad}

    async def work(item: str) -> int:
        await asyncio.sleep(0)
        if item in bad:
            raise errors[item](f"{item} is bad")
        return len(item)

    async def body() -> None:
        try:
            outcomes = await student.Pipeline(work, workers=2, maxsize=2).run(Source(items).stream())
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"run() raised {type(exc).__name__}({str(exc)!r}) from one item's work; expected an "
                        f"Outcome(item, error=...) for that item and the pipeline to go on", pytrace=False)
        got = summary(outcomes)
        observe(got)
        expected = [[item, None, errors[item].__name__] if item in bad else [item, len(item), None] for item in items]
        assert got == expected, f"expected [item, value, error type] {expected}, got {got}"

    run(body, "run() did not return (did a failing item stop a worker?)")


@points(3, hint="At the end of the source put one sentinel per worker; each worker returns when it gets one.")
def test_the_end_of_the_source_ends_every_task(student, rng, observe) -> None:
    items = words(rng, rng.randint(3, 9))
    workers = rng.randint(1, 4)

    async def work(item: str) -> str:
        await asyncio.sleep(0)
        return item + "!"

    async def body() -> None:
        before = asyncio.all_tasks()
        source = Source(items)
        outcomes = await student.Pipeline(work, workers=workers, maxsize=2).run(source.stream())
        left = leftover_tasks(before)
        values = [o.value for o in outcomes]
        observe([values, len(left), source.closed])
        expected = [item + "!" for item in items]
        assert values == expected, f"expected one outcome per item, values {expected}; got {values}"
        assert left == [], f"run() returned but left {len(left)} task(s) running: {left}; expected none"
        assert source.closed, "expected the source generator to be closed when run() returns"

    run(body, "run() did not return after the source ended (do all the workers get told to stop?)")


@points(3, hint="Check the stop flag before taking the next item, never after; close the source with aclose().")
def test_stop_finishes_every_item_taken_and_closes_the_source(student, rng, observe) -> None:
    workers = rng.randint(1, 4)
    stop_at = rng.randint(2, 8)             # the index of the item whose work calls stop()

    async def body() -> None:
        before = asyncio.all_tasks()
        source = Source(words(rng, stop_at + 1), rng)   # endless: only stop() ends this run
        pipeline = None

        async def work(item: str) -> str:
            await asyncio.sleep(0)
            if item == source.items[stop_at]:
                stop(pipeline)
            return item

        pipeline = student.Pipeline(work, workers=workers, maxsize=2)
        outcomes = await pipeline.run(source.stream())
        got = [o.item for o in outcomes]
        left = leftover_tasks(before)
        # How many items were taken before stop() depends on scheduling; the items up to stop_at do not.
        observe([got[:stop_at + 1], got == source.items[:source.taken], source.closed, len(left)])
        assert got[:stop_at + 1] == source.items[:stop_at + 1], (
            f"expected at least the first {stop_at + 1} items finished, in order; got {got}")
        assert got == source.items[:source.taken], (
            f"took {source.taken} items but returned {len(got)} outcomes; expected one per item taken")
        assert source.closed, "the source generator was not closed after stop()"
        assert left == [], f"run() returned but left {len(left)} task(s) running; expected none"

    run(body, "run() did not return after stop()")


@points(2, hint="Run the tasks in an asyncio.TaskGroup (or cancel them yourself in a finally) and let CancelledError out.")
def test_cancelling_run_cancels_everything(student, rng, observe) -> None:
    workers = rng.randint(1, 4)
    started = asyncio.Event()
    in_work: list[str] = []

    async def work(item: str) -> str:
        in_work.append(item)
        if len(in_work) == workers:
            started.set()
        await asyncio.Event().wait()        # never finishes
        return item

    async def body() -> None:
        before = asyncio.all_tasks()
        source = Source(words(rng, 3), rng)
        task = asyncio.create_task(student.Pipeline(work, workers=workers, maxsize=2).run(source.stream()))
        try:
            await asyncio.wait_for(started.wait(), LIMIT / 2)
        except TimeoutError:
            pytest.fail(f"expected {workers} items in work at once (workers={workers}) within {LIMIT / 2:g} s; "
                        f"got {len(in_work)}", pytrace=False)
        task.cancel()
        raised = "nothing"
        try:
            await task
        except asyncio.CancelledError:
            raised = "CancelledError"
        except Exception as exc:  # noqa: BLE001  (which exception came out is what we check)
            raised = type(exc).__name__
        await ticks(5)                      # let cancelled tasks run their cleanup
        left = leftover_tasks(before)
        observe([sorted(in_work), raised, len(left), source.closed])
        assert raised == "CancelledError", f"expected run() to let CancelledError out when cancelled, got {raised}"
        assert left == [], f"{len(left)} task(s) still running after run() was cancelled; expected none"
        assert source.closed, "expected the source generator to be closed after run() was cancelled"

    run(body, "cancelling run() did not end it")


@points(1, hint="Raise ValueError in __init__ when workers or maxsize is below 1.")
def test_bad_arguments_are_refused(student, rng, observe) -> None:
    async def work(item: str) -> str:
        return item * 2

    cases = [{"workers": 0}, {"maxsize": 0}, {"workers": -rng.randint(1, 9)}, {"maxsize": -rng.randint(1, 9)}]
    rng.shuffle(cases)
    raised = []
    for kwargs in cases:
        try:
            student.Pipeline(work, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raised.append(type(exc).__name__)
        else:
            raised.append("nothing")
    items = words(rng, rng.randint(2, 5))
    smallest: list = []

    async def body() -> None:                # 1 worker and a queue of 1 are allowed, and work
        smallest.extend(o.value for o in await student.Pipeline(work, workers=1, maxsize=1).run(Source(items).stream()))

    run(body, "Pipeline(work, workers=1, maxsize=1).run() did not return")
    observe([raised, smallest])
    for kwargs, name in zip(cases, raised):
        assert name == "ValueError", f"expected Pipeline(work, **{kwargs}) to raise ValueError, it raised {name}"
    assert smallest == [item * 2 for item in items], f"workers=1, maxsize=1 should work; got {smallest}"
