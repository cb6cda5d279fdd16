"""Graded tests for Lab 3: interleaving, the fake clock, join (value, exception, parking), and ending.

Each test draws its task names, counts, sleeps and values from ``rng`` (a new seed for every grading run)
and ``observe``s what your loop produced from them: the order things happened in, the fake clock, the
step count, results and exception types. The grader compares those with the reference solution's.
"""

from __future__ import annotations

import inspect

from corolab.labs.grading import points

ANIMALS = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "owl", "yak"]
ERRORS = [ValueError, KeyError, ZeroDivisionError, PermissionError, LookupError]


async def counter(student, name: str, n: int, log: list[str], result: object = None):
    """Log one line per round and let the others run between rounds."""
    for i in range(n):
        log.append(f"{name}{i}")
        await student.sleep(0)
    return result


def raised(call) -> BaseException | None:
    """Run ``call()``; return the exception it raised, or None if it returned."""
    try:
        call()
    except Exception as error:
        return error
    return None


def described(error: BaseException | None) -> str:
    if error is None:
        return "nothing was raised"
    return f"got {type(error).__name__}: {error}" if str(error) else f"got {type(error).__name__}"


@points(3, hint="Keep a deque of ready tasks: pop from the left, send(None), and put a task that "
                "awaited sleep(0) at the back (append, not appendleft).")
def test_tasks_interleave_round_robin(student, rng, observe) -> None:
    loop, log = student.Loop(), []
    names = rng.sample(ANIMALS, rng.randint(2, 4))
    rounds = {name: rng.randint(2, 4) for name in names}
    results = {name: rng.randint(1, 999) for name in names}

    async def main():
        tasks = [loop.spawn(counter(student, name, rounds[name], log, results[name]), name) for name in names]
        return [await task for task in tasks]

    got = loop.run(main())
    observe([log, got])
    # round robin: every task logs its round i before any task logs round i + 1
    want = [f"{name}{i}" for i in range(max(rounds.values())) for name in names if i < rounds[name]]
    assert log == want, f"the tasks should take turns: expected {want}, got {log}"
    assert got == list(results.values()), f"main should return {list(results.values())}, returned {got!r}"


@points(2, hint="Keep sleepers in a heap of (wake time, sequence number, task); when nothing is ready, "
                "set now to the earliest wake time and move every sleeper due by then to the ready queue.")
def test_sleepers_wake_in_time_order_on_a_fake_clock(student, rng, observe) -> None:
    loop, woke = student.Loop(), []
    k = rng.randint(3, 5)
    seconds = rng.sample(range(1, 8), k)
    seconds.insert(rng.randrange(k), rng.choice(seconds))     # one tie: the first to fall asleep wakes first
    if seconds == sorted(seconds):
        seconds.reverse()
    names = rng.sample(ANIMALS, len(seconds))

    async def napper(name: str, s: float):
        await student.sleep(s)
        woke.append([name, loop.now])

    async def main():
        for name, s in zip(names, seconds):
            loop.spawn(napper(name, s), name)

    loop.run(main())
    observe([woke, loop.now])
    order = sorted(range(len(names)), key=lambda i: (seconds[i], i))
    want = [[names[i], seconds[i]] for i in order]
    assert woke == want, f"expected [name, time woken] in this order: {want}, got {woke}"
    assert loop.now == max(seconds), f"the fake clock should end at {max(seconds)}, it reads {loop.now}"


@points(2, hint="Task.__await__ is a generator: `if not done: yield self`, then `return self.result()`. "
                "When a task returns, store StopIteration's value as its result.")
def test_join_returns_the_value(student, rng, observe) -> None:
    loop = student.Loop()
    xs = rng.sample(range(2, 40), rng.randint(3, 5))
    naps = [rng.randint(1, 5) for _ in xs]
    naps[0] = max(naps)                      # main joins the slowest first: the others are done by then

    async def square(x: int, nap: int) -> int:
        await student.sleep(nap)
        return x * x

    async def main():
        tasks = [loop.spawn(square(x, nap)) for x, nap in zip(xs, naps)]
        return [await t for t in tasks]

    got = loop.run(main())
    observe([got, loop.now])
    assert got == [x * x for x in xs], f"main should get {[x * x for x in xs]}, got {got!r}"
    assert loop.now == max(naps), f"the sleeps overlap, so the clock should end at {max(naps)}, not {loop.now}"


@points(2, hint="When the loop receives a Task from send(), add the current task to that task's list of "
                "waiters and do not put it back in the ready queue; when a task finishes, move its waiters "
                "to the ready queue.")
def test_joiner_is_parked_not_polling(student, rng, observe) -> None:
    loop = student.Loop()
    rounds, nap = rng.randint(1, 6), rng.randint(1, 9)
    quick_result, slow_result = rng.sample(ANIMALS, 2)

    async def napper():
        await student.sleep(nap)
        return slow_result

    async def main():
        quick = loop.spawn(counter(student, "q", rounds, [], quick_result))   # rounds + 1 steps
        first = await quick
        slow = loop.spawn(napper())                                         # 2 steps: start + wake-up
        return [first, await slow]

    got = loop.run(main())
    observe([got, loop.now, loop.steps])
    assert got == [quick_result, slow_result], f"main should get {[quick_result, slow_result]}, got {got!r}"
    assert loop.now == nap, f"the clock should end at {nap}, not {loop.now}"
    want = 3 + (rounds + 1) + 2              # main: start, after quick, after slow; no step spent polling
    assert loop.steps == want, f"expected {want} steps (a parked joiner takes none while it waits), got {loop.steps}"


@points(3, hint="Catch Exception around send(None) and store it in the task; in Task.__await__, return "
                "self.result(), which raises the stored exception in the joiner.")
def test_exception_reaches_the_joiner(student, rng, observe) -> None:
    loop, log = student.Loop(), []
    error_type, message, nap = rng.choice(ERRORS), f"{rng.choice(ANIMALS)}-{rng.randint(1, 999)}", rng.randint(1, 5)

    async def fails():
        await student.sleep(nap)
        raise error_type(message)

    async def main():
        t = loop.spawn(fails(), "fails")
        try:
            await t
        except Exception as error:
            log.append([type(error).__name__, str(error), error is t.exception()])
        return "survived"

    got = loop.run(main())
    observe([got, log])
    want = [[error_type.__name__, str(error_type(message)), True]]
    assert got == "survived", f"main caught the error, so run() should return 'survived', not {got!r}"
    assert log == want, \
        f"main should catch the task's own exception ([type, message, is t.exception()]): {want}, got {log}"


@points(2, hint="Keep a list of waiters per task; when it finishes, wake all of them, once each, in the "
                "order they started waiting, then clear the list.")
def test_every_joiner_gets_the_result_once(student, rng, observe) -> None:
    loop, log, runs = student.Loop(), [], []
    names = rng.sample(ANIMALS, rng.randint(2, 4))
    value, nap = rng.randint(1, 999), rng.randint(1, 6)

    async def work():
        runs.append("work ran")
        await student.sleep(nap)
        return value

    async def joiner(name: str, t):
        got = await t
        log.append([name, got, loop.now])

    async def main():
        t = loop.spawn(work(), "work")
        joiners = [loop.spawn(joiner(name, t), name) for name in names]
        for j in joiners:
            await j

    loop.run(main())
    observe([log, len(runs), loop.steps])
    want = [[name, value, nap] for name in names]
    assert len(runs) == 1, f"the work should run once, it ran {len(runs)} times"
    assert log == want, f"every joiner should get the value once, in order: {want}, got {log}"
    # 2 steps each for work, every joiner and main: the later joiners are done when main awaits them
    assert loop.steps == 2 * (len(names) + 2), f"expected {2 * (len(names) + 2)} steps, got {loop.steps}"


@points(1, hint="In Task.__await__, yield only when the task is not done yet; awaiting a finished task "
                "returns its result at once, without a trip through the loop.")
def test_awaiting_a_finished_task_does_not_pause(student, rng, observe) -> None:
    loop, seen = student.Loop(), []
    value, joins = rng.randint(1, 10**6), rng.randint(2, 4)

    async def quick():
        return value

    async def main():
        t = loop.spawn(quick())
        await student.sleep(1)                  # quick finishes meanwhile
        assert t.done(), "the task should be done after one round"
        before = loop.steps
        for _ in range(joins):                  # every join gives the same answer, at once
            seen.append(await t)
        seen.append(loop.steps - before)

    loop.run(main())
    observe(seen)
    want = [value] * joins + [0]
    assert seen == want, f"expected {joins} times the value and then 0 steps spent: {want}, got {seen}"


@points(2, hint="run() goes on while any task is ready or sleeping, not just until main is done; only then "
                "does it return main's result.")
def test_run_waits_for_every_task(student, rng, observe) -> None:
    loop, log, handles = student.Loop(), [], []
    names = rng.sample(ANIMALS, rng.randint(1, 3))
    naps = {name: rng.randint(1, 20) for name in names}
    result = rng.randint(1, 999)

    async def background(name: str):
        await student.sleep(naps[name])
        log.append([name, loop.now])

    async def main():
        handles.extend(loop.spawn(background(name), name) for name in names)
        log.append(["main", loop.now])
        return result

    got = loop.run(main())
    observe([got, log, [h.done() for h in handles]])
    order = sorted(names, key=lambda name: (naps[name], names.index(name)))
    want = [["main", 0]] + [[name, naps[name]] for name in order]
    assert got == result, f"run() should return main's result {result}, got {got!r}"
    assert log == want, f"every background task should run to the end: expected {want}, got {log}"
    assert all(h.done() for h in handles), "run() returned while a background task was not done"


@points(1, hint="A task that raises is done: store the exception, go on with the others, and let run() "
                "raise main's exception only if main itself failed.")
def test_failures_stay_in_their_task(student, rng, observe) -> None:
    loop, log, handles = student.Loop(), [], []
    lost, main_error = rng.sample(ERRORS, 2)
    rounds, result = rng.randint(1, 4), rng.randint(1, 999)

    async def fails():
        raise lost("lost")

    async def main():
        handles.append(loop.spawn(fails()))                        # nobody joins it
        handles.append(loop.spawn(counter(student, "c", rounds, log, result)))
        await student.sleep(1)
        return "fine"

    got = loop.run(main())
    stored = handles[0].exception()
    from_result = raised(handles[0].result)

    async def broken_main():
        await student.sleep(0)
        raise main_error("main failed")

    from_run = raised(lambda: student.Loop().run(broken_main()))
    observe([got, type(stored).__name__, type(from_result).__name__, handles[1].result(), log,
             type(from_run).__name__])
    assert got == "fine", f"a failure in another task must not change main's result 'fine'; got {got!r}"
    assert isinstance(stored, lost), f"exception() should give the task's {lost.__name__}, gave {stored!r}"
    assert isinstance(from_result, lost), f"result() should raise {lost.__name__}: {described(from_result)}"
    assert handles[1].result() == result and log == [f"c{i}" for i in range(rounds)], \
        f"the other task should run to the end and return {result!r}; it logged {log}"
    assert isinstance(from_run, main_error), f"run() should raise main's {main_error.__name__}: {described(from_run)}"


@points(1, hint="After the loop empties, look for tasks that are not done: they wait for each other and "
                "nothing can wake them. Raise RuntimeError('deadlock: ...').")
def test_deadlock_is_reported(student, rng, observe) -> None:
    loop, tasks = student.Loop(), {}
    ring = rng.sample(ANIMALS, rng.randint(2, 4))              # each waits for the next, the last for the first
    workers = {f"w{i}": rng.randint(1, 9) for i in range(rng.randint(1, 3))}

    async def waits_for(other: str):
        await tasks[other]

    async def works(nap: int):
        await student.sleep(nap)

    async def main():
        for i, name in enumerate(ring):
            tasks[name] = loop.spawn(waits_for(ring[(i + 1) % len(ring)]), name)
        for name, nap in workers.items():
            tasks[name] = loop.spawn(works(nap), name)
        await tasks[ring[0]]

    error = raised(lambda: loop.run(main()))
    done = {name: task.done() for name, task in tasks.items()}
    observe([type(error).__name__, "deadlock" in str(error), done, loop.now])
    assert isinstance(error, RuntimeError) and "deadlock" in str(error), \
        f"run() should raise RuntimeError('deadlock: ...'): {described(error)}"
    want = {name: name in workers for name in tasks}
    assert done == want, f"only the workers can finish: expected done {want}, got {done}"
    assert loop.now == max(workers.values()), f"the workers' sleeps end at {max(workers.values())}, not {loop.now}"


@points(1, hint="A task that yields anything but a Sleep or a Task fails with RuntimeError (close its "
                "coroutine); the other tasks go on.")
def test_unknown_request_fails_that_task(student, rng, observe) -> None:
    loop, log = student.Loop(), []
    request = rng.choice([rng.choice(ANIMALS), rng.randint(1, 99), None])     # not a Sleep, not a Task
    rounds, result = rng.randint(0, 3), rng.randint(1, 999)

    class Nonsense:
        def __await__(self):
            yield request

    async def odd():
        for i in range(rounds):
            log.append(f"odd{i}")
            await student.sleep(0)
        await Nonsense()
        log.append("odd goes on")          # must never run

    async def main():
        t = loop.spawn(odd())
        try:
            await t
        except Exception as error:
            log.append(f"main saw {type(error).__name__}")
        return [inspect.getcoroutinestate(t.coro), result]

    state, got = loop.run(main())
    observe([log, state, got])
    want = [f"odd{i}" for i in range(rounds)] + ["main saw RuntimeError"]
    assert log == want, \
        f"the odd task should stop with RuntimeError at its request {request!r}: expected {want}, got {log}"
    assert state == inspect.CORO_CLOSED, f"the failed task's coroutine should be closed, it is {state}"
    assert got == result, f"run() should return main's result {result}, got {got!r}"


@points(1, hint="Count every send(None) in loop.steps; before a step, if steps already equals max_steps, "
                "raise RuntimeError instead of stepping.")
def test_run_is_bounded(student, rng, observe) -> None:
    loop = student.Loop()
    max_steps = rng.randint(10, 999)

    async def forever():
        while True:
            await student.sleep(0)

    error = raised(lambda: loop.run(forever(), max_steps=max_steps))
    observe([type(error).__name__, loop.steps])
    assert isinstance(error, RuntimeError), f"run() should give up with RuntimeError: {described(error)}"
    assert loop.steps == max_steps, \
        f"run() should take exactly max_steps={max_steps} steps, took {loop.steps} ({described(error)})"
