"""Graded tests for Lab 8: interleaving, the fake clock, join (value, exception, parking), and ending."""

from __future__ import annotations

import pytest

from corolab.labs.grading import points


async def counter(student, name: str, n: int, log: list[str], result: object = None):
    """Log one line per round and let the others run between rounds."""
    for i in range(n):
        log.append(f"{name}{i}")
        await student.sleep(0)
    return result


@points(3, hint="Keep a deque of ready tasks: pop from the left, send(None), and put a task that "
                "awaited sleep(0) at the back (append, not appendleft).")
def test_tasks_interleave_round_robin(student) -> None:
    loop, log = student.Loop(), []

    async def main():
        a = loop.spawn(counter(student, "a", 3, log), "a")
        b = loop.spawn(counter(student, "b", 2, log), "b")
        await a
        await b
        return "main done"

    assert loop.run(main()) == "main done"
    assert log == ["a0", "b0", "a1", "b1", "a2"]


@points(2, hint="Keep sleepers in a heap of (wake time, sequence number, task); when nothing is ready, "
                "set now to the earliest wake time and move every sleeper due by then to the ready queue.")
def test_sleepers_wake_in_time_order_on_a_fake_clock(student) -> None:
    loop, woke = student.Loop(), []

    async def napper(name: str, seconds: float):
        await student.sleep(seconds)
        woke.append((name, loop.now))

    async def main():
        for name, seconds in [("slow", 3), ("fast", 1), ("mid", 2), ("also fast", 1)]:
            loop.spawn(napper(name, seconds), name)

    loop.run(main())
    assert woke == [("fast", 1), ("also fast", 1), ("mid", 2), ("slow", 3)]
    assert loop.now == 3          # fake time: three seconds passed, in no real time at all


@points(2, hint="Task.__await__ is a generator: `if not done: yield self`, then `return self.result()`. "
                "When a task returns, store StopIteration's value as its result.")
def test_join_returns_the_value(student) -> None:
    loop = student.Loop()

    async def square(x: int) -> int:
        await student.sleep(1)
        return x * x

    async def main():
        tasks = [loop.spawn(square(x)) for x in (2, 3, 4)]
        return [await t for t in tasks]

    assert loop.run(main()) == [4, 9, 16]
    assert loop.now == 1          # the three sleeps overlapped


@points(2, hint="When the loop receives a Task from send(), add the current task to that task's list of "
                "waiters and do not put it back in the ready queue; when a task finishes, move its waiters "
                "to the ready queue.")
def test_joiner_is_parked_not_polling(student) -> None:
    loop = student.Loop()

    async def main():
        quick = loop.spawn(counter(student, "q", 3, [], "q"))   # 4 steps: start + 3 resumes
        assert await quick == "q"
        slow = loop.spawn(napper())                             # 2 steps: start + wake-up
        assert await slow == "slept"
        return "ok"

    async def napper():
        await student.sleep(5)
        return "slept"

    assert loop.run(main()) == "ok"
    assert loop.now == 5
    assert loop.steps == 3 + 4 + 2   # main: start, after quick, after slow; no step spent polling


@points(3, hint="Catch Exception around send(None) and store it in the task; in Task.__await__, return "
                "self.result(), which raises the stored exception in the joiner.")
def test_exception_reaches_the_joiner(student) -> None:
    loop, log = student.Loop(), []

    async def fails():
        await student.sleep(1)
        raise ValueError("boom")

    async def main():
        t = loop.spawn(fails(), "fails")
        try:
            await t
        except ValueError as error:
            log.append(("caught", str(error), error is t.exception()))
        return "survived"

    assert loop.run(main()) == "survived"
    assert log == [("caught", "boom", True)]


@points(2, hint="Keep a list of waiters per task; when it finishes, wake all of them, once each, in the "
                "order they started waiting, then clear the list.")
def test_every_joiner_gets_the_result_once(student) -> None:
    loop, log, runs = student.Loop(), [], []

    async def work():
        runs.append("work ran")
        await student.sleep(2)
        return 42

    async def joiner(name: str, t):
        value = await t
        log.append((name, value, loop.now))

    async def main():
        t = loop.spawn(work(), "work")
        j1 = loop.spawn(joiner("first", t))
        j2 = loop.spawn(joiner("second", t))
        await j1
        await j2

    loop.run(main())
    assert runs == ["work ran"]
    assert log == [("first", 42, 2), ("second", 42, 2)]
    # 2 steps each for work, first, second and main: j2 is done by the time main awaits it, so no pause
    assert loop.steps == 2 + 2 + 2 + 2


@points(1, hint="In Task.__await__, yield only when the task is not done yet; awaiting a finished task "
                "returns its result at once, without a trip through the loop.")
def test_awaiting_a_finished_task_does_not_pause(student) -> None:
    loop, seen = student.Loop(), []

    async def quick():
        return "ready"

    async def main():
        t = loop.spawn(quick())
        await student.sleep(1)                  # quick finishes meanwhile
        assert t.done()
        before = loop.steps
        seen.append(await t)
        seen.append(await t)                    # a second join gives the same answer
        seen.append(loop.steps - before)

    loop.run(main())
    assert seen == ["ready", "ready", 0]


@points(2, hint="run() goes on while any task is ready or sleeping, not just until main is done; only then "
                "does it return main's result.")
def test_run_waits_for_every_task(student) -> None:
    loop, log = student.Loop(), []

    async def background():
        await student.sleep(10)
        log.append(("background", loop.now))

    async def main():
        nonlocal_task.append(loop.spawn(background()))
        log.append(("main", loop.now))
        return "main result"

    nonlocal_task: list = []
    assert loop.run(main()) == "main result"
    assert log == [("main", 0), ("background", 10)]
    assert nonlocal_task[0].done() and nonlocal_task[0].result() is None


@points(1, hint="A task that raises is done: store the exception, go on with the others, and let run() "
                "raise main's exception only if main itself failed.")
def test_failures_stay_in_their_task(student) -> None:
    loop, log = student.Loop(), []
    handles: list = []

    async def fails():
        raise KeyError("lost")

    async def main():
        handles.append(loop.spawn(fails()))                        # nobody joins it
        handles.append(loop.spawn(counter(student, "c", 2, log, "counted")))
        await student.sleep(1)
        return "fine"

    assert loop.run(main()) == "fine"
    assert isinstance(handles[0].exception(), KeyError)
    with pytest.raises(KeyError):
        handles[0].result()
    assert handles[1].result() == "counted" and log == ["c0", "c1"]

    async def broken_main():
        await student.sleep(0)
        raise LookupError("main failed")

    with pytest.raises(LookupError, match="main failed"):
        student.Loop().run(broken_main())


@points(1, hint="After the loop empties, look for tasks that are not done: they wait for each other and "
                "nothing can wake them. Raise RuntimeError('deadlock: ...').")
def test_deadlock_is_reported(student) -> None:
    loop, tasks = student.Loop(), {}

    async def waits_for(other: str):
        await tasks[other]

    async def main():
        tasks["a"] = loop.spawn(waits_for("b"), "a")
        tasks["b"] = loop.spawn(waits_for("a"), "b")
        await tasks["a"]

    with pytest.raises(RuntimeError, match="deadlock"):
        loop.run(main())


@points(1, hint="A task that yields anything but a Sleep or a Task fails with RuntimeError (close its "
                "coroutine); the other tasks go on.")
def test_unknown_request_fails_that_task(student) -> None:
    loop, log = student.Loop(), []

    class Nonsense:
        def __await__(self):
            yield "please do something odd"

    async def odd():
        log.append("odd starts")
        await Nonsense()
        log.append("odd goes on")          # must never run

    async def main():
        t = loop.spawn(odd())
        try:
            await t
        except RuntimeError:
            log.append("main saw RuntimeError")
        return "done"

    assert loop.run(main()) == "done"
    assert log == ["odd starts", "main saw RuntimeError"]


@points(1, hint="Count every send(None) in loop.steps; before a step, if steps already equals max_steps, "
                "raise RuntimeError instead of stepping.")
def test_run_is_bounded(student) -> None:
    loop = student.Loop()

    async def forever():
        while True:
            await student.sleep(0)

    with pytest.raises(RuntimeError):
        loop.run(forever(), max_steps=50)
    assert loop.steps == 50
