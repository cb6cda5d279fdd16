"""Graded tests for Lab 6. Real TCP clients talk to the student's server; every assertion is about what
a client received, in order, so the tests prove concurrent service without timing anything.

Names and messages are drawn from ``rng`` (a new seed every grading run); each test ``observe``s the lines
its clients received, which the grader compares with what the reference solution's clients received.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import Awaitable, Callable

import pytest

from corolab.labs.grading import points

LIMIT = 5.0  # seconds any one wait may take before it counts as hanging (a passing test takes < 1 s)


def names(rng: random.Random, n: int) -> list[str]:
    """``n`` different random names a client may take (lowercase letters and a digit)."""
    found: list[str] = []
    while len(found) < n:
        name = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6))) + str(rng.randrange(10))
        if name not in found:
            found.append(name)
    return found


def sentence(rng: random.Random) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))) for _ in range(rng.randint(1, 4)))


async def within(awaitable: Awaitable, what: str):
    """``await awaitable``, or fail the test with ``what`` if it takes longer than LIMIT."""
    try:
        return await asyncio.wait_for(awaitable, LIMIT)
    except TimeoutError:
        pytest.fail(f"{what} within {LIMIT:g} s", pytrace=False)


class Client:
    """One chat user on a real connection; ``heard`` keeps every line it received."""

    def __init__(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.name, self.reader, self.writer = name, reader, writer
        self.heard: list[str] = []

    @classmethod
    async def connect(cls, port: int, name: str = "?") -> Client:
        reader, writer = await within(asyncio.open_connection("127.0.0.1", port), "could not connect")
        return cls(name, reader, writer)

    @classmethod
    async def join(cls, port: int, name: str) -> Client:
        client = await cls.connect(port, name)
        await client.say(name)
        await client.expect(f"welcome {name}")
        return client

    async def say(self, text: str) -> None:
        self.writer.write(f"{text}\n".encode())
        await self.writer.drain()

    async def line(self, expecting: str = "a line") -> str:
        """The next line received, without its newline; "" at the end of the stream."""
        raw = await within(self.reader.readline(), f"{self.name} expected {expecting!r} but got no line")
        text = raw.decode().rstrip("\n")
        self.heard.append(text)
        return text

    async def lines(self, n: int, expecting: str = "a line") -> list[str]:
        return [await self.line(expecting) for _ in range(n)]

    async def expect(self, *expected: str) -> None:
        """Read one line per ``expected`` and fail with both lists unless they are the same."""
        got = [await self.line(e) for e in expected]
        assert got == list(expected), f"{self.name} expected {list(expected)}, got {got}"

    async def hung_up(self) -> bool:
        """True when the server has closed this connection (after any lines still in flight)."""
        try:
            rest = await within(self.reader.read(), f"the server did not hang up on {self.name}")
        except ConnectionError:
            return True
        self.heard += rest.decode().splitlines()
        return True

    def close(self) -> None:
        self.writer.close()


async def room(port: int, *who: str) -> list[Client]:
    """Join ``who`` in order; each client reads the join notices of those after it, so all start even."""
    clients = [await Client.join(port, name) for name in who]
    for i, client in enumerate(clients):
        await client.expect(*(f"* {n} joined" for n in who[i + 1:]))
    return clients


def run(body: Callable[[object, int], Awaitable[None]], student) -> None:
    """Start the student's server, run one async test body against it, close it."""

    async def main() -> None:
        server = student.ChatServer()
        port = await server.start()
        try:
            await body(server, port)
        finally:
            await within(server.close(), "close() did not return")

    asyncio.run(main())


@points(2, hint="After the welcome, send '* NAME joined' to every other client.")
def test_welcome_and_join_notice(student, rng, observe) -> None:
    first, second = names(rng, 2)

    async def body(server, port: int) -> None:
        a = await Client.join(port, first)
        b = await Client.join(port, second)
        await a.expect(f"* {second} joined")
        observe([a.heard, b.heard, server.names])
        assert server.names == sorted([first, second]), f"expected names {sorted([first, second])}, got {server.names}"

    run(body, student)


@points(3, hint="Send 'NAME: text' to every client except the one who said it.")
def test_a_message_goes_to_everyone_else(student, rng, observe) -> None:
    who = names(rng, 3)
    said = [sentence(rng) for _ in range(3)]

    async def body(server, port: int) -> None:
        a, b, c = await room(port, *who)
        await a.say(said[0])
        await b.expect(f"{who[0]}: {said[0]}")
        await c.expect(f"{who[0]}: {said[0]}")
        await b.say(said[1])
        await a.expect(f"{who[1]}: {said[1]}")    # not her own line first
        await a.say("   ")                        # blank lines are ignored
        await a.say(said[2])
        await c.expect(f"{who[1]}: {said[1]}", f"{who[0]}: {said[2]}")
        await b.expect(f"{who[0]}: {said[2]}")
        observe([a.heard, b.heard, c.heard])

    run(body, student)


@points(3, hint="Each connection is served by its own handler task; never hold a lock across a whole session.")
def test_twenty_clients_at_once(student, rng, observe) -> None:
    who = names(rng, 20)

    async def body(server, port: int) -> None:
        clients = await room(port, *who)              # each saw everyone who joined after it
        await asyncio.gather(*(c.say(f"hello from {c.name}") for c in clients))
        received = await asyncio.gather(*(c.lines(19, "a hello") for c in clients))
        heard = {c.name: sorted(lines) for c, lines in zip(clients, received)}
        observe(heard)
        for name, lines in heard.items():
            expected = sorted(f"{n}: hello from {n}" for n in who if n != name)
            assert lines == expected, f"{name} expected the 19 others' hellos {expected[:2]}..., got {lines[:3]}..."

    run(body, student)


@points(1, hint="'/who' answers the sender only with 'users: ' and the sorted names joined by ', '.")
def test_who_lists_the_room(student, rng, observe) -> None:
    *who, newcomer = names(rng, rng.randint(3, 6))

    async def body(server, port: int) -> None:
        clients = await room(port, *who)
        users = "users: " + ", ".join(sorted(who))
        for client in rng.sample(clients, 2):
            await client.say("/who")
            await client.expect(users)
        await Client.join(port, newcomer)
        for client in clients:
            await client.expect(f"* {newcomer} joined")   # the notice, not someone else's /who answer
        observe([c.heard for c in clients])

    run(body, student)


@points(2, hint="Refuse an empty name, one with a space, or one in use: send the error line and close.")
def test_bad_and_taken_names_are_refused(student, rng, observe) -> None:
    first, later, word = names(rng, 3)
    cases = [(first, "error name taken"), (f"{word} {later}", "error bad name"), ("", "error bad name"),
             (rng.choice("/*") + word, "error bad name")]
    rng.shuffle(cases)

    async def body(server, port: int) -> None:
        a = await Client.join(port, first)
        answers = []
        for bad, answer in cases:
            intruder = await Client.connect(port, f"a client named {bad!r}")
            await intruder.say(bad)
            answers.append(await intruder.line(answer))
            assert answers[-1] == answer, f"name {bad!r}: expected {answer!r}, got {answers[-1]!r}"
            assert await intruder.hung_up()
        await Client.join(port, later)
        await a.expect(f"* {later} joined")          # no notice about the refused ones came first
        observe([answers, a.heard, server.names])
        assert server.names == sorted([first, later]), f"expected names {sorted([first, later])}, got {server.names}"

    run(body, student)


@points(3, hint="In a `finally` around the session: remove the name, send '* NAME left', close the writer.")
def test_quit_and_hang_up_both_leave_cleanly(student, rng, observe) -> None:
    who = names(rng, 3)

    async def body(server, port: int) -> None:
        a, b, c = await room(port, *who)
        await b.say("/quit")
        await b.expect("bye")
        await b.hung_up()
        await a.expect(f"* {who[1]} left")
        c.close()                                     # no /quit: the connection just ends
        await a.expect(f"* {who[2]} left")
        left = server.names
        assert left == [who[0]], f"expected only {who[0]!r} in the room, got {left}"
        await Client.join(port, who[1])               # the name is free again
        await a.expect(f"* {who[1]} joined")
        observe([a.heard, b.heard, left])

    run(body, student)


@points(2, hint="Only a line that ends in a newline is a message; catch ConnectionError around the session.")
def test_a_connection_reset_mid_line_hurts_nobody(student, rng, observe) -> None:
    first, leaving, third = names(rng, 3)
    half, question = sentence(rng), sentence(rng)

    async def body(server, port: int) -> None:
        a = await Client.join(port, first)
        m = await Client.join(port, leaving)
        await a.expect(f"* {leaving} joined")
        m.writer.write(half.encode())                 # no newline: half a line
        await m.writer.drain()
        m.writer.transport.abort()                    # a reset, not a polite close
        await a.expect(f"* {leaving} left")
        b = await Client.join(port, third)
        await b.say(question)
        await a.expect(f"* {third} joined", f"{third}: {question}")
        observe([a.heard, server.names])

    run(body, student)


@points(3, hint="close(): stop the listening server, close every client's writer, then await the handlers.")
def test_close_hangs_up_on_everyone(student, rng, observe) -> None:
    who = names(rng, rng.randint(2, 5))

    async def main() -> None:
        server = student.ChatServer()
        port = await server.start()
        clients = await room(port, *who)
        before = server.names
        await within(server.close(), "close() did not return")
        for client in clients:
            await client.hung_up()
        after = server.names
        try:
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), LIMIT)
            refused = False
        except OSError:
            refused = True
        observe([before, after, refused])
        assert after == [], f"expected no names after close(), got {after}"
        assert refused, "expected a new connection to be refused after close()"

    asyncio.run(main())
