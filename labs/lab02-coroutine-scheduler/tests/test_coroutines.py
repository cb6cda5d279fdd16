"""Graded tests for Lab 2: priming, close propagation, broadcast order, and scheduler interleaving.

Every test draws its inputs (numbers, names, task lengths) from ``rng``, which the grader seeds afresh for
each grading run, and ``observe()``s what your code computed from them; the grader compares that with what
the reference solution computes from the same inputs."""

from __future__ import annotations

import inspect
import random

import pytest

from corolab.labs.grading import points
from corolab.labs.seeded import words


def numbers(rng: random.Random, k: int) -> list[int]:
    return [rng.randint(-50, 50) for _ in range(k)]


def first_difference(got: list, expected: list, what: str = "entry") -> str:
    """Where ``got`` first parts from ``expected``, briefly (the whole lists can be long)."""
    for i, (mine, theirs) in enumerate(zip(got, expected), start=1):
        if mine != theirs:
            return f"{what} {i}: expected {theirs!r}, got {mine!r}"
    if len(got) < len(expected):
        return f"{what} {len(got) + 1}: expected {expected[len(got)]!r}, got nothing more"
    return f"expected only {len(expected)}, got {len(got)}: {what} {len(expected) + 1}, {got[len(expected)]!r}, is one too many"


def closing_probe(log: list[str], name: str):
    """A sink that records the items it gets and when it is closed."""
    try:
        while True:
            log.append(f"{name} got {(yield)!r}")
    finally:
        log.append(f"{name} closed")


# -- the push pipeline -------------------------------------------------------------------------------

@points(2, hint="Call the generator function, advance the generator once with next(), return it.")
def test_coroutine_primes(student, rng: random.Random, observe) -> None:
    factor = rng.randint(2, 9)

    @student.coroutine
    def scaler():
        value = None
        while True:
            value = yield None if value is None else value * factor

    items = numbers(rng, 4)
    s = scaler()
    state = inspect.getgeneratorstate(s)
    assert state == inspect.GEN_SUSPENDED, f"a primed coroutine is suspended at its first yield; it is {state}"
    got = [s.send(x) for x in items]
    observe(got)
    expected = [x * factor for x in items]
    assert got == expected, f"sending {items!r} to a primed scaler(x{factor}) should give {expected!r}, got {got!r}"


@points(1, hint="Wrap the inner function with functools.wraps(func).")
def test_coroutine_keeps_name_and_doc(student, rng: random.Random, observe) -> None:
    name, noun = words(rng, 2)

    def counter():
        while True:
            yield

    counter.__name__, counter.__qualname__, counter.__doc__ = name, name, f"Counts {noun}."
    decorated = student.coroutine(counter)
    got = {"__name__": decorated.__name__, "__doc__": decorated.__doc__}
    observe(got)
    expected = {"__name__": name, "__doc__": f"Counts {noun}."}
    assert got == expected, f"the decorated function should keep {expected!r}, got {got!r}"


@points(1, hint="Send an item on only when predicate(item) is true.")
def test_where_filters(student, rng: random.Random, observe) -> None:
    m, r = rng.randint(2, 4), rng.randint(0, 1)
    items = numbers(rng, 12)
    out: list[int] = []
    w = student.where(lambda x: x % m == r, student.collect(out))
    for x in items:
        w.send(x)
    observe(out)
    expected = [x for x in items if x % m == r]
    assert out == expected, f"where(x % {m} == {r}) sent {items!r} should pass on {expected!r}, got {out!r}"


@points(2, hint="Put `target.close()` in a `finally` around where's loop.")
def test_close_propagates_through_where(student, rng: random.Random, observe) -> None:
    low = rng.randint(-20, 0)
    high = low + rng.randint(10, 30)
    items = numbers(rng, 6)
    log: list[str] = []
    probe = closing_probe(log, "sink")
    next(probe)
    w = student.where(lambda x: x > low, student.where(lambda x: x < high, probe))
    for x in items:
        w.send(x)
    w.close()
    state = inspect.getgeneratorstate(w)
    observe({"log": log, "state": state})
    expected = [f"sink got {x!r}" for x in items if low < x < high] + ["sink closed"]
    assert log == expected, (f"{items!r} sent through where(x > {low}) -> where(x < {high}) -> sink, then close(): "
                             f"the sink's {first_difference(log, expected, 'log entry')}")
    assert state == inspect.GEN_CLOSED, f"the front coroutine should be closed after close(); it is {state}"


@points(2, hint="For each item, loop over the targets in the order given and send to each.")
def test_broadcast_sends_to_all_in_order(student, rng: random.Random, observe) -> None:
    names, items = words(rng, rng.randint(2, 4)), numbers(rng, rng.randint(2, 3))
    log: list[str] = []
    probes = [closing_probe(log, name) for name in names]
    for p in probes:
        next(p)
    b = student.broadcast(probes)
    for x in items:
        b.send(x)
    observe(log)
    expected = [f"{name} got {x!r}" for x in items for name in names]
    assert log == expected, f"broadcasting {items!r} to {names!r}: {first_difference(log, expected, 'log entry')}"


@points(2, hint="Close every target in broadcast's `finally`.")
def test_broadcast_close_closes_all(student, rng: random.Random, observe) -> None:
    first, second = words(rng, 2)
    items = numbers(rng, 3)
    log: list[str] = []
    probe1, probe2 = closing_probe(log, first), closing_probe(log, second)
    next(probe1)
    next(probe2)
    out: list[int] = []
    b = student.broadcast([probe1, student.where(lambda v: v > 0, probe2), student.collect(out)])
    for x in items:
        b.send(x)
    b.close()
    observe({"log": log, "collected": out})
    expected = []
    for x in items:
        expected.append(f"{first} got {x!r}")
        if x > 0:
            expected.append(f"{second} got {x!r}")
    expected += [f"{first} closed", f"{second} closed"]
    assert log == expected, (f"broadcast to [{first}, where(v > 0) -> {second}, collect] sent {items!r}, then "
                             f"close(): {first_difference(log, expected, 'log entry')}")
    assert out == items, f"collect should have got {items!r}, got {out!r}"


# -- the scheduler -----------------------------------------------------------------------------------

def task(n: int, result: str):
    for i in range(n):
        yield i
    return result


def seeded_tasks(rng: random.Random, names: list[str]) -> list[tuple[str, int, str]]:
    """One task per name as (name, how many values it yields, what it returns). The first yields at least 2
    and the second at least 1, so a scheduler that runs each task to its end before the next leaves another
    trace than round robin for every seed (with one task yielding, the two orders are the same)."""
    results = words(rng, len(names))
    least = [2, 1] + [0] * len(names)
    return [(name, rng.randint(least[i], 4), results[i].upper()) for i, name in enumerate(names)]


def round_robin(tasks: list[tuple[str, list]]) -> list[tuple[str, object]]:
    """The trace a round-robin scheduler leaves for tasks given as (name, the values it yields):
    value i of every task still running, in spawn order, for i = 0, 1, 2, ..."""
    rounds = max(len(values) for _, values in tasks)
    return [(name, values[i]) for i in range(rounds) for name, values in tasks if i < len(values)]


def yields(tasks: list[tuple[str, int, str]]) -> list[tuple[str, list]]:
    return [(name, list(range(n))) for name, n, _ in tasks]


@points(3, hint="Use a deque: pop a task from the left, run it to its next yield, append it to the right.")
def test_scheduler_round_robin_order(student, rng: random.Random, observe) -> None:
    tasks = seeded_tasks(rng, words(rng, rng.randint(3, 4)))
    s = student.Scheduler()
    for name, n, result in tasks:
        s.spawn(name, task(n, result))
    s.run()
    observe(s.trace)
    expected = round_robin(yields(tasks))
    lengths = {name: n for name, n, _ in tasks}
    assert s.trace == expected, f"tasks yielding {lengths} values: {first_difference(s.trace, expected, 'trace entry')}"


@points(2, hint="Catch StopIteration and keep its .value as the task's result.")
def test_scheduler_return_values(student, rng: random.Random, observe) -> None:
    tasks = seeded_tasks(rng, words(rng, rng.randint(2, 4)))
    s = student.Scheduler()
    for name, n, result in tasks:
        s.spawn(name, task(n, result))
    got = s.run()
    observe(got)
    expected = {name: result for name, _, result in tasks}
    assert got == expected, f"run() should return {expected!r}, got {got!r}"


@points(2, hint="Catch Exception around each step: store the exception as that task's result and go on.")
def test_scheduler_survives_failing_task(student, rng: random.Random, observe) -> None:
    error = rng.choice([ValueError, KeyError, RuntimeError, ZeroDivisionError])
    bad_name, said, *names = words(rng, 4)
    fails_after = rng.randint(1, 2)

    def bad():
        for _ in range(fails_after):
            yield said
        raise error(f"{bad_name} gave up")

    tasks = seeded_tasks(rng, names)
    s = student.Scheduler()
    s.spawn(bad_name, bad())
    for name, n, result in tasks:
        s.spawn(name, task(n, result))
    try:
        results = s.run()
    except Exception as exc:
        pytest.fail(f"run() let the {type(exc).__name__} raised by task {bad_name!r} escape; it should store the "
                    f"exception as that task's result and run the others on", pytrace=False)
    failure = results.get(bad_name)
    observe({"trace": s.trace, "failure": type(failure).__name__,
             "others": {name: value for name, value in results.items() if name != bad_name}})
    assert isinstance(failure, error), (f"task {bad_name!r} raised {error.__name__}: run() should map it to that "
                                        f"exception, got {failure!r}")
    expected = {name: result for name, _, result in tasks}
    others = {name: value for name, value in results.items() if name != bad_name}
    assert others == expected, f"the other tasks should still finish with {expected!r}, got {others!r}"
    trace = round_robin([(bad_name, [said] * fails_after)] + yields(tasks))
    assert s.trace == trace, first_difference(s.trace, trace, "trace entry")


@points(1, hint="Count every resumption of a task as one step and stop when max_steps is reached.")
def test_scheduler_is_bounded(student, rng: random.Random, observe) -> None:
    def forever(start: int):
        n = start
        while True:
            yield n
            n += 1

    names = words(rng, rng.randint(1, 3))
    starts = [rng.randint(0, 100) for _ in names]
    max_steps = rng.randint(3, 9)
    s = student.Scheduler()
    for name, start in zip(names, starts):
        s.spawn(name, forever(start))
    results = s.run(max_steps=max_steps)
    observe({"results": results, "trace": s.trace})
    expected = [(names[i % len(names)], starts[i % len(names)] + i // len(names)) for i in range(max_steps)]
    assert results == {}, f"no task ever finishes, so run() should return {{}}, got {results!r}"
    assert s.trace == expected, (f"run(max_steps={max_steps}) with {len(names)} endless tasks: "
                                 f"{first_difference(s.trace, expected, 'trace entry')}")
