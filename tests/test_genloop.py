"""corolab.teach.genloop: round-robin order, requests, virtual time, sockets and the generator echo server.

Order is asserted from the loop's trace, never from wall time. Every run is bounded (max_steps, and
idle_timeout wherever real sockets are involved).
"""

from __future__ import annotations

import socket
import threading

import pytest

from corolab.teach.genloop import (
    Cancel, Deadlock, Join, Loop, Readable, Sleep, Spawn, TaskCancelled, VirtualClock, WhoAmI, Writable,
    connect, echo_server, listen, recv, send_all,
)


def ticker(loop: Loop, n: int):
    for i in range(n):
        loop.note(f"tick {i}")
        yield


def forever():
    while True:
        yield


def fails_after_one_step(error: Exception):
    yield
    raise error


def wait_readable(sock: socket.socket):
    yield Readable(sock)


def test_round_robin_order() -> None:
    with Loop() as loop:
        loop.spawn(ticker(loop, 3), "a")
        loop.spawn(ticker(loop, 2), "b")
        loop.run()
        assert loop.events("tick") == [
            ("a", "tick 0"), ("b", "tick 0"), ("a", "tick 1"), ("b", "tick 1"), ("a", "tick 2"),
        ]
        assert loop.events("done") == [("b", "done"), ("a", "done")]
        assert loop.alive == 0


def test_run_is_bounded_by_steps_and_close_cancels_the_rest() -> None:
    cleaned: list[str] = []

    def forever():
        try:
            while True:
                yield
        finally:
            cleaned.append("forever")

    loop = Loop()
    loop.spawn(forever())
    assert loop.run(max_steps=5) == 5
    assert loop.alive == 1
    loop.close()
    assert cleaned == ["forever"]
    assert loop.events("cancelled") == [("forever", "cancelled")]


def test_run_until_a_task_ends_leaves_the_others_alive() -> None:
    def short():
        yield
        yield
        return "short result"

    with Loop() as loop:
        loop.spawn(forever(), "forever")
        tid = loop.spawn(short(), "short")
        loop.run(until=tid)
        assert loop.result(tid) == "short result"
        assert loop.alive == 1
        with pytest.raises(LookupError):
            loop.run(until=999)


def test_run_until_a_predicate() -> None:
    with Loop() as loop:
        loop.spawn(ticker(loop, 100), "t")
        loop.run(until=lambda: len(loop.events("tick")) == 4)
        assert len(loop.events("tick")) == 4


def test_spawn_rejects_a_generator_function() -> None:
    def task():
        yield

    with Loop() as loop, pytest.raises(TypeError, match="forgot to call"):
        loop.spawn(task)  # type: ignore[arg-type]


def test_native_coroutines_are_tasks_too_when_their_awaitables_yield_requests() -> None:
    class Nap:
        def __await__(self):
            yield Sleep(2)

    clock = VirtualClock()
    with Loop(clock) as loop:
        async def sleepy():
            await Nap()
            return clock()

        tid = loop.spawn(sleepy(), "sleepy")
        loop.run()
        assert loop.result(tid) == 2


def test_virtual_clock_orders_sleepers_by_deadline_without_waiting() -> None:
    clock = VirtualClock()
    loop = Loop(clock)

    def sleeper(seconds: float):
        yield Sleep(seconds)
        loop.note(f"woke at {clock():g}")

    loop.spawn(sleeper(30.0), "slow")
    loop.spawn(sleeper(5.0), "fast")
    loop.spawn(sleeper(10.0), "middle")
    loop.run()
    assert loop.events("woke") == [("fast", "woke at 5"), ("middle", "woke at 10"), ("slow", "woke at 30")]
    assert clock() == 30.0
    loop.close()


def test_equal_deadlines_wake_in_the_order_they_slept() -> None:
    clock = VirtualClock()
    with Loop(clock) as loop:
        def sleeper(name: str):
            yield Sleep(1)
            loop.note(f"{name} woke")

        for name in "cab":
            loop.spawn(sleeper(name), name)
        loop.run()
        assert [event for _, event in loop.trace if event.endswith("woke")] == ["c woke", "a woke", "b woke"]


def test_a_due_sleeper_is_not_starved_by_busy_tasks() -> None:
    """Timers are checked every round, not only when nothing else is ready."""
    clock = VirtualClock()
    with Loop(clock) as loop:
        def napper():
            yield Sleep(0)
            loop.note("napper woke")

        loop.spawn(ticker(loop, 10), "busy")
        loop.spawn(napper(), "napper")
        loop.run()
        events = [event for _, event in loop.events()]
        assert events.index("napper woke") < events.index("tick 3")
        assert clock() == 0  # time never had to move: someone was always ready


def test_real_clock_sleep_actually_waits_its_deadline() -> None:
    loop = Loop()  # time.monotonic

    def sleeper():
        start = loop.clock()
        yield Sleep(0.02)
        return loop.clock() - start

    tid = loop.spawn(sleeper())
    loop.run()
    assert loop.result(tid) >= 0.02
    loop.close()


def test_spawn_join_and_whoami() -> None:
    with Loop() as loop:
        def child(x: int):
            yield
            return x * 2

        def parent():
            me = yield WhoAmI()
            tid = yield Spawn(child(21), "child")
            assert tid != me
            return (yield Join(tid))

        tid = loop.spawn(parent(), "parent")
        loop.run()
        assert loop.result(tid) == 42


def test_join_of_an_already_finished_task_answers_at_once() -> None:
    with Loop() as loop:
        def child():
            return "early"
            yield  # pragma: no cover - makes this a generator

        def parent(child_id: int):
            yield
            yield
            return (yield Join(child_id))

        child_id = loop.spawn(child(), "child")
        tid = loop.spawn(parent(child_id), "parent")
        loop.run()
        assert loop.result(tid) == "early"


def test_join_raises_the_error_the_child_died_of() -> None:
    with Loop() as loop:
        def parent():
            tid = yield Spawn(fails_after_one_step(ValueError("boom")), "child")
            try:
                yield Join(tid)
            except ValueError as error:
                return f"caught {error}"

        tid = loop.spawn(parent(), "parent")
        loop.run()
        assert loop.result(tid) == "caught boom"
        assert loop.events("failed") == [("child", "failed: ValueError('boom')")]


def test_result_raises_what_the_task_died_of_and_refuses_running_tasks() -> None:
    with Loop() as loop:
        bad_id = loop.spawn(fails_after_one_step(KeyError("k")))
        forever_id = loop.spawn(forever())
        loop.run(max_steps=10)
        with pytest.raises(KeyError):
            loop.result(bad_id)
        with pytest.raises(LookupError, match="still running"):
            loop.result(forever_id)


def test_cancel_runs_finally_and_wakes_joiners_with_taskcancelled() -> None:
    clock = VirtualClock()
    loop = Loop(clock)
    cleaned: list[str] = []
    sleepy_id: list[int] = []

    def sleepy():
        try:
            yield Sleep(1000)
        finally:
            cleaned.append("sleepy")

    def boss():
        tid = yield Spawn(sleepy(), "sleepy")
        sleepy_id.append(tid)
        yield Sleep(1)
        assert (yield Cancel(tid)) is True
        assert (yield Cancel(tid)) is False
        try:
            yield Join(tid)
        except TaskCancelled:
            return "joined a cancelled task"

    tid = loop.spawn(boss(), "boss")
    loop.run()
    assert cleaned == ["sleepy"]
    assert loop.result(tid) == "joined a cancelled task"
    assert ("sleepy", "cancelled") in loop.trace
    assert clock() == 1  # the 1000-second sleeper was removed, not waited for
    with pytest.raises(TaskCancelled):
        loop.result(sleepy_id[0])
    loop.close()


def test_cancelling_a_socket_waiter_unregisters_it() -> None:
    a, b = socket.socketpair()
    clock = VirtualClock()
    with a, b, Loop(clock) as loop:
        def canceller(tid: int):
            yield Sleep(1)
            yield Cancel(tid)

        tid = loop.spawn(wait_readable(a), "reader")
        loop.spawn(canceller(tid), "canceller")
        loop.run(max_steps=100, idle_timeout=5)
        assert loop.alive == 0
        assert loop.events("cancelled") == [("reader", "cancelled")]
        assert not loop._selector.get_map()  # nothing left registered


def test_a_bad_request_is_thrown_back_into_the_task() -> None:
    with Loop() as loop:
        def confused():
            try:
                yield "please sleep"
            except TypeError as error:
                return str(error)

        tid = loop.spawn(confused())
        loop.run()
        assert "not a request" in loop.result(tid)


def test_join_errors_are_thrown_back_into_the_task() -> None:
    with Loop() as loop:
        def lost():
            errors = []
            me = yield WhoAmI()
            for target in (me, 12345):
                try:
                    yield Join(target)
                except (RuntimeError, LookupError) as error:
                    errors.append(type(error).__name__)
            return errors

        tid = loop.spawn(lost())
        loop.run()
        assert loop.result(tid) == ["RuntimeError", "LookupError"]


def test_deadlock_is_reported_with_who_waits_for_what() -> None:
    loop = Loop()
    ids: dict[str, int] = {}

    def waits_for(other: str):
        yield  # let both tasks get their ids first
        yield Join(ids[other])

    ids["a"] = loop.spawn(waits_for("b"), "a")
    ids["b"] = loop.spawn(waits_for("a"), "b")
    with pytest.raises(Deadlock, match=r"a \(join b\), b \(join a\)"):
        loop.run()
    loop.close()


def test_two_tasks_cannot_wait_to_read_the_same_socket() -> None:
    a, b = socket.socketpair()
    with a, b, Loop() as loop:
        def reader():
            try:
                yield Readable(a)
            except RuntimeError as error:
                return f"refused: {error}"
            return "read"

        first = loop.spawn(reader(), "first")
        second = loop.spawn(reader(), "second")
        loop.run(until=second, idle_timeout=5)
        assert loop.result(second).startswith("refused: task 'first' already waits")
        b.send(b"x")
        loop.run(idle_timeout=5)
        assert loop.result(first) == "read"


def test_waiting_on_a_closed_socket_is_an_error_in_the_task() -> None:
    a, b = socket.socketpair()
    a.close()
    with b, Loop() as loop:
        tid = loop.spawn(wait_readable(a))
        loop.run()
        with pytest.raises(ValueError, match="closed socket"):
            loop.result(tid)


def test_idle_timeout_ends_a_wait_for_a_socket_that_never_becomes_ready() -> None:
    a, b = socket.socketpair()
    with a, b, Loop() as loop:
        loop.spawn(wait_readable(a))
        with pytest.raises(TimeoutError):
            loop.run(idle_timeout=0.05)


def test_virtual_time_moves_while_a_socket_is_not_ready() -> None:
    """With a virtual clock, a pending socket does not stop time: the writer's sleep ends at once."""
    a, b = socket.socketpair()
    clock = VirtualClock()
    with a, b, Loop(clock) as loop:
        def reader():
            yield Readable(a)
            loop.note(f"read {a.recv(10).decode()} at {clock():g}")

        def writer():
            yield Sleep(5)
            yield Writable(b)
            b.send(b"hi")
            loop.note("wrote")

        loop.spawn(reader(), "reader")
        loop.spawn(writer(), "writer")
        loop.run(max_steps=100, idle_timeout=5)
        assert loop.events("read") == [("reader", "read hi at 5")]
        assert loop.events("wrote") == [("writer", "wrote")]
        assert loop.trace.index(("writer", "wrote")) < loop.trace.index(("reader", "read hi at 5"))


def test_echo_server_serves_two_generator_clients_interleaved() -> None:
    loop = Loop()
    listener = listen()
    port = listener.getsockname()[1]
    replies: dict[str, list[bytes]] = {"A": [], "B": []}
    sockets: list[socket.socket] = []

    def client(name: str):
        conn = yield from connect(("127.0.0.1", port))
        sockets.append(conn)
        try:
            for i in range(4):
                yield from send_all(conn, f"{name}{i}".encode())
                replies[name].append((yield from recv(conn)))
        finally:
            conn.close()

    loop.spawn(echo_server(loop, listener, max_clients=2), "server")
    loop.spawn(client("A"), "A")
    loop.spawn(client("B"), "B")
    loop.run(max_steps=10_000, idle_timeout=5)
    assert replies == {"A": [b"A0", b"A1", b"A2", b"A3"], "B": [b"B0", b"B1", b"B2", b"B3"]}
    echoes = [event for _, event in loop.events("echo")]
    # Overlap: each client was served before the other's last message, so both were in service at once.
    assert echoes.index("echo B0") < echoes.index("echo A3")
    assert echoes.index("echo A0") < echoes.index("echo B3")
    assert {name for name, _ in loop.events("echo")} == {"handler-1", "handler-2"}
    assert loop.alive == 0
    assert listener.fileno() == -1  # the server's finally closed it
    assert [s.fileno() for s in sockets] == [-1, -1]
    loop.close()


def test_echo_server_serves_blocking_clients_in_threads_at_once() -> None:
    """Two ordinary blocking clients both wait at a barrier after their first echo: only a server that
    serves both at once lets them past it."""
    loop = Loop()
    listener = listen()
    port = listener.getsockname()[1]
    both_served = threading.Barrier(2, timeout=10)
    answers: dict[str, bytes] = {}

    def ask(sock: socket.socket, data: bytes) -> bytes:
        sock.sendall(data)
        got = b""
        while len(got) < len(data) and (chunk := sock.recv(100)):
            got += chunk
        return got

    def blocking_client(name: str) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            answers[name] = ask(sock, name.encode() + b"-hello")
            both_served.wait()
            answers[name] += ask(sock, name.encode() + b"-bye")

    threads = [threading.Thread(target=blocking_client, args=(n,)) for n in ("X", "Y")]
    for t in threads:
        t.start()
    try:
        loop.spawn(echo_server(loop, listener, max_clients=2), "server")
        loop.run(max_steps=100_000, idle_timeout=10)
    finally:
        for t in threads:
            t.join(10)
        loop.close()
    assert answers == {"X": b"X-helloX-bye", "Y": b"Y-helloY-bye"}
    assert not both_served.broken
    assert [event for _, event in loop.events("accepted")] == ["accepted client 1", "accepted client 2"]
