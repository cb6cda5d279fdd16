"""Graded tests for Lab 5. Real TCP clients talk to the student's server; every assertion is about what
a client received, in order, so the tests prove concurrent service without timing anything."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from corolab.labs.grading import points

LIMIT = 5.0  # seconds any one test may take before it counts as hanging (a passing one takes < 1 s)


class Client:
    """One chat user on a real connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    @classmethod
    async def join(cls, port: int, name: str) -> Client:
        client = await cls.connect(port)
        await client.say(name)
        assert await client.line() == f"welcome {name}"
        return client

    async def say(self, text: str) -> None:
        self.writer.write(f"{text}\n".encode())
        await self.writer.drain()

    async def line(self) -> str:
        """The next line received, without its newline; "" at the end of the stream."""
        return (await self.reader.readline()).decode().rstrip("\n")

    async def lines(self, n: int) -> list[str]:
        return [await self.line() for _ in range(n)]

    async def hung_up(self) -> bool:
        """True when the server has closed this connection (after any lines still in flight)."""
        try:
            return await self.reader.read() is not None
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()


async def room(port: int, *names: str) -> list[Client]:
    """Join ``names`` in order; each client reads the join notices of those after it, so all start even."""
    clients = [await Client.join(port, name) for name in names]
    for i, client in enumerate(clients):
        assert await client.lines(len(names) - 1 - i) == [f"* {n} joined" for n in names[i + 1:]]
    return clients


def run(body: Callable[[object, int], Awaitable[None]], student) -> None:
    """Start the student's server, run one async test body against it, close it; a hang fails this test."""

    async def main() -> None:
        server = student.ChatServer()
        port = await server.start()
        try:
            await asyncio.wait_for(body(server, port), LIMIT)
        finally:
            await asyncio.wait_for(server.close(), LIMIT)

    asyncio.run(main())


@points(2, hint="After the welcome, send '* NAME joined' to every other client.")
def test_welcome_and_join_notice(student) -> None:
    async def body(server, port: int) -> None:
        alice = await Client.join(port, "alice")
        await Client.join(port, "bob")
        assert await alice.line() == "* bob joined"
        assert server.names == ["alice", "bob"]

    run(body, student)


@points(3, hint="Send 'NAME: text' to every client except the one who said it.")
def test_a_message_goes_to_everyone_else(student) -> None:
    async def body(server, port: int) -> None:
        alice, bob, carol = await room(port, "alice", "bob", "carol")
        await alice.say("hi all")
        assert await bob.line() == "alice: hi all"
        assert await carol.line() == "alice: hi all"
        await bob.say("hi alice")
        assert await alice.line() == "bob: hi alice"   # not her own "alice: hi all" first
        await alice.say("   ")                         # blank lines are ignored
        await alice.say("bye")
        assert await carol.line() == "bob: hi alice"
        assert await carol.line() == "alice: bye"

    run(body, student)


@points(3, hint="Each connection is served by its own handler task; never hold a lock across a whole session.")
def test_twenty_clients_at_once(student) -> None:
    async def body(server, port: int) -> None:
        names = [f"user{i:02}" for i in range(20)]
        clients = await room(port, *names)             # each saw everyone who joined after it
        await asyncio.gather(*(c.say(f"hello from {n}") for c, n in zip(clients, names)))
        received = await asyncio.gather(*(c.lines(19) for c in clients))
        for name, lines in zip(names, received):
            assert sorted(lines) == sorted(f"{n}: hello from {n}" for n in names if n != name)

    run(body, student)


@points(1, hint="'/who' answers the sender only with 'users: ' and the sorted names joined by ', '.")
def test_who_lists_the_room(student) -> None:
    async def body(server, port: int) -> None:
        bob = await Client.join(port, "bob")
        alice = await Client.join(port, "alice")
        await alice.say("/who")
        assert await alice.line() == "users: alice, bob"
        assert await bob.line() == "* alice joined"    # bob got the notice, not the /who answer
        await bob.say("/who")
        assert await bob.line() == "users: alice, bob"

    run(body, student)


@points(2, hint="Refuse an empty name, one with a space, or one in use: send the error line and close.")
def test_bad_and_taken_names_are_refused(student) -> None:
    async def body(server, port: int) -> None:
        alice = await Client.join(port, "alice")
        for bad, answer in [("alice", "error name taken"), ("two words", "error bad name"), ("", "error bad name")]:
            intruder = await Client.connect(port)
            await intruder.say(bad)
            assert await intruder.line() == answer
            assert await intruder.hung_up()
        await Client.join(port, "bob")
        assert await alice.line() == "* bob joined"     # no notice about the refused ones came first
        assert server.names == ["alice", "bob"]

    run(body, student)


@points(3, hint="In a `finally` around the session: remove the name, send '* NAME left', close the writer.")
def test_quit_and_hang_up_both_leave_cleanly(student) -> None:
    async def body(server, port: int) -> None:
        alice, bob, carol = await room(port, "alice", "bob", "carol")
        await bob.say("/quit")
        assert await bob.line() == "bye"
        assert await bob.hung_up()
        assert await alice.line() == "* bob left"
        carol.close()                                   # no /quit: the connection just ends
        assert await alice.line() == "* carol left"
        assert server.names == ["alice"]
        await Client.join(port, "bob")                  # the name is free again
        assert await alice.line() == "* bob joined"

    run(body, student)


@points(2, hint="Only a line that ends in a newline is a message; catch ConnectionError around the session.")
def test_a_connection_reset_mid_line_hurts_nobody(student) -> None:
    async def body(server, port: int) -> None:
        alice = await Client.join(port, "alice")
        mallory = await Client.join(port, "mallory")
        assert await alice.line() == "* mallory joined"
        mallory.writer.write(b"half a li")
        await mallory.writer.drain()
        mallory.writer.transport.abort()                # a reset, not a polite close
        assert await alice.line() == "* mallory left"
        bob = await Client.join(port, "bob")
        await bob.say("still here?")
        assert await alice.lines(2) == ["* bob joined", "bob: still here?"]

    run(body, student)


@points(3, hint="close(): stop the listening server, close every client's writer, then await the handlers.")
def test_close_hangs_up_on_everyone(student) -> None:
    async def main() -> None:
        server = student.ChatServer()
        port = await server.start()
        clients = [await Client.join(port, name) for name in ("alice", "bob", "carol")]
        await server.close()
        for client in clients:
            assert await client.hung_up()
        assert server.names == []
        with pytest.raises(OSError):
            await Client.connect(port)

    asyncio.run(asyncio.wait_for(main(), LIMIT))
