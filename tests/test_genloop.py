"""corolab.genloop: round-robin order, requests, virtual time, sockets and the generator echo server.

Order is asserted from the loop's event log, never from wall time.
"""

from __future__ import annotations

import socket
import threading

import pytest

from corolab.genloop import (
    Cancel, Join, Loop, Sleep, Spawn, TaskCancelled, VirtualClock, WhoAmI, connect, echo_server, listen,
    recv, send_all,
)


def counter(loop: Loop, n: int):
    for i in range(n):
        loop.note(f"tick {i}")
        yield


def test_round_robin_order() -> None:
    loop = Loop()
    loop.spawn(counter(loop, 3), "a")
    loop.spawn(counter(loop, 2), "b")
    loop.run()
    ticks = [(name, ev) for name, ev in loop.events() if ev.startswith("tick")]
    assert ticks == [("a", "tick 0"), ("b", "tick 0"), ("a", "tick 1"), ("b", "tick 1"), ("a", "tick 2")]
    assert loop.alive == 0


def test_run_is_bounded() -> None:
    def forever():
        while True:
            yield

    with Loop() as loop:
        loop.spawn(forever())
        assert loop.run(max_steps=5) == 5
        assert loop.alive == 1


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
    woke = [(name, ev) for name, ev in loop.events() if ev.startswith("woke")]
    assert woke == [("fast", "woke at 5"), ("middle", "woke at 10"), ("slow", "woke at 30")]
    assert clock() == 30.0


def test_spawn_join_and_whoami() -> None:
    loop = Loop()

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
    assert loop.results[tid] == 42


def test_join_raises_the_error_the_child_died_of() -> None:
    loop = Loop()

    def child():
        yield
        raise ValueError("boom")

    def parent():
        tid = yield Spawn(child())
        try:
            yield Join(tid)
        except ValueError as error:
            return f"caught {error}"

    tid = loop.spawn(parent())
    loop.run()
    assert loop.results[tid] == "caught boom"


def test_cancel_runs_finally_and_wakes_joiners_with_taskcancelled() -> None:
    clock = VirtualClock()
    loop = Loop(clock)
    cleaned: list[str] = []

    def sleepy():
        try:
            yield Sleep(1000)
        finally:
            cleaned.append("sleepy")

    def boss():
        tid = yield Spawn(sleepy(), "sleepy")
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
    assert loop.results[tid] == "joined a cancelled task"
    assert ("sleepy", "cancelled") in loop.events()
    assert clock() == 1  # the 1000-second sleeper was removed, not waited for


def test_a_bad_request_is_thrown_back_into_the_task() -> None:
    loop = Loop()

    def confused():
        try:
            yield "please sleep"
        except TypeError as error:
            return str(error)

    tid = loop.spawn(confused())
    loop.run()
    assert "not a request" in loop.results[tid]


def test_deadlock_is_reported() -> None:
    loop = Loop()

    def waits_for_itself():
        me = yield WhoAmI()
        yield Join(me)

    loop.spawn(waits_for_itself())
    with pytest.raises(RuntimeError, match="deadlock"):
        loop.run()
    loop.close()


def test_echo_server_serves_two_generator_clients_interleaved() -> None:
    loop = Loop()
    listener = listen()
    port = listener.getsockname()[1]
    replies: dict[str, list[bytes]] = {"A": [], "B": []}

    def client(name: str):
        conn = yield from connect(("127.0.0.1", port))
        try:
            for i in range(4):
                yield from send_all(conn, f"{name}{i}".encode())
                replies[name].append((yield from recv(conn)))
        finally:
            conn.close()

    loop.spawn(echo_server(loop, listener, max_clients=2), "server")
    loop.spawn(client("A"), "A")
    loop.spawn(client("B"), "B")
    loop.run(max_steps=10_000)
    assert replies == {"A": [b"A0", b"A1", b"A2", b"A3"], "B": [b"B0", b"B1", b"B2", b"B3"]}
    echoes = [ev for _, ev in loop.events() if ev.startswith("echo")]
    # Overlap: B was served before A's last message, so both clients were in service at once.
    assert echoes.index("echo 'B0'") < echoes.index("echo 'A3'")
    assert echoes.index("echo 'A0'") < echoes.index("echo 'B3'")
    assert loop.alive == 0
    assert listener.fileno() == -1  # the server's finally closed it


def test_echo_server_serves_blocking_clients_in_threads_at_once() -> None:
    """Two ordinary blocking clients both connect before either finishes: the server must overlap them."""
    loop = Loop()
    listener = listen()
    port = listener.getsockname()[1]
    both_connected = threading.Barrier(2, timeout=10)
    answers: dict[str, bytes] = {}

    def blocking_client(name: str) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(name.encode() + b"-hello")
            answers[name] = sock.recv(100)
            both_connected.wait()  # neither hangs up until the other got its echo: they overlap
            sock.sendall(name.encode() + b"-bye")
            answers[name] += sock.recv(100)

    threads = [threading.Thread(target=blocking_client, args=(n,)) for n in ("X", "Y")]
    for t in threads:
        t.start()
    loop.spawn(echo_server(loop, listener, max_clients=2), "server")
    loop.run(max_steps=100_000)
    for t in threads:
        t.join(10)
    assert answers == {"X": b"X-helloX-bye", "Y": b"Y-helloY-bye"}
