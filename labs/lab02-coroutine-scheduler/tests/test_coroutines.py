"""Graded tests for Lab 2: priming, close propagation, broadcast order, and scheduler interleaving."""

from __future__ import annotations

import inspect

import pytest

from corolab.labs.grading import points


def closing_probe(log: list[str], name: str):
    """A sink that records the items it gets and when it is closed."""
    try:
        while True:
            log.append(f"{name} got {(yield)!r}")
    finally:
        log.append(f"{name} closed")


@points(2, hint="Call the generator function, advance the generator once with next(), return it.")
def test_coroutine_primes(student) -> None:
    @student.coroutine
    def doubler():
        value = None
        while True:
            value = yield None if value is None else value * 2

    d = doubler()
    assert inspect.getgeneratorstate(d) == inspect.GEN_SUSPENDED
    assert d.send(21) == 42


@points(1, hint="Wrap the inner function with functools.wraps(func).")
def test_coroutine_keeps_name_and_doc(student) -> None:
    @student.coroutine
    def counter():
        """Counts."""
        while True:
            yield

    assert counter.__name__ == "counter"
    assert counter.__doc__ == "Counts."


@points(1, hint="Send an item on only when predicate(item) is true.")
def test_where_filters(student) -> None:
    out: list[int] = []
    w = student.where(lambda x: x % 2 == 0, student.collect(out))
    for x in range(7):
        w.send(x)
    assert out == [0, 2, 4, 6]


@points(2, hint="Put `target.close()` in a `finally` around where's loop.")
def test_close_propagates_through_where(student) -> None:
    log: list[str] = []
    probe = closing_probe(log, "sink")
    next(probe)
    w = student.where(lambda x: x > 1, student.where(lambda x: x < 5, probe))
    for x in (1, 3, 7):
        w.send(x)
    w.close()
    assert log == ["sink got 3", "sink closed"]
    assert inspect.getgeneratorstate(w) == inspect.GEN_CLOSED


@points(2, hint="For each item, loop over the targets in the order given and send to each.")
def test_broadcast_sends_to_all_in_order(student) -> None:
    log: list[str] = []
    probes = [closing_probe(log, n) for n in ("a", "b", "c")]
    for p in probes:
        next(p)
    b = student.broadcast(probes)
    b.send(1)
    b.send(2)
    assert log == ["a got 1", "b got 1", "c got 1", "a got 2", "b got 2", "c got 2"]


@points(2, hint="Close every target in broadcast's `finally`.")
def test_broadcast_close_closes_all(student) -> None:
    log: list[str] = []
    first, second = closing_probe(log, "x"), closing_probe(log, "y")
    next(first)
    next(second)
    out: list[int] = []
    b = student.broadcast([first, student.where(lambda v: v > 0, second), student.collect(out)])
    b.send(0)
    b.close()
    assert log == ["x got 0", "x closed", "y closed"]
    assert out == [0]


def task(n: int, result: str):
    for i in range(n):
        yield i
    return result


@points(3, hint="Use a deque: pop a task from the left, run it to its next yield, append it to the right.")
def test_scheduler_round_robin_order(student) -> None:
    s = student.Scheduler()
    s.spawn("a", task(3, "A"))
    s.spawn("b", task(1, "B"))
    s.spawn("c", task(2, "C"))
    s.run()
    assert s.trace == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("c", 1), ("a", 2)]


@points(2, hint="Catch StopIteration and keep its .value as the task's result.")
def test_scheduler_return_values(student) -> None:
    s = student.Scheduler()
    s.spawn("short", task(1, "done early"))
    s.spawn("long", task(4, "done late"))
    assert s.run() == {"short": "done early", "long": "done late"}


@points(2, hint="Catch Exception around each step: store the exception as that task's result and go on.")
def test_scheduler_survives_failing_task(student) -> None:
    def bad():
        yield "about to fail"
        raise ValueError("boom")

    s = student.Scheduler()
    s.spawn("bad", bad())
    s.spawn("good", task(3, "ok"))
    results = s.run()
    assert isinstance(results["bad"], ValueError)
    assert results["good"] == "ok"
    assert s.trace == [("bad", "about to fail"), ("good", 0), ("good", 1), ("good", 2)]


@points(1, hint="Count every resumption of a task as one step and stop when max_steps is reached.")
def test_scheduler_is_bounded(student) -> None:
    def forever():
        n = 0
        while True:
            yield n
            n += 1

    s = student.Scheduler()
    s.spawn("forever", forever())
    assert s.run(max_steps=5) == {}
    assert s.trace == [("forever", i) for i in range(5)]
