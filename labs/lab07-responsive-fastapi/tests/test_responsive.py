"""Graded tests for Lab 7. The student's app runs under a real uvicorn server in a thread of its own;
the tests are clients with their own event loop. Every assertion is about order (did the health probe
answer before the slow call was let go? did one client's reply finish inside another's?), never about
how many milliseconds something took.

Queries, tokens and prompts are drawn from ``rng`` (a new seed every grading run); each test ``observe``s
what the app sent back, which the grader compares with what the reference solution sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
import threading
import time
from collections.abc import Awaitable, Iterator

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect

from corolab.labs.grading import points

LIMIT = 5.0  # seconds a test may wait for any one thing; a passing test takes well under one


def word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 7)))


def words(rng: random.Random, n: int) -> list[str]:
    return [word(rng) for _ in range(n)]


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free port of 127.0.0.1 in a daemon thread; yield its host:port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    pause = threading.Event()       # never set: its wait() is a sleep that reads as one
    for _ in range(int(6 * LIMIT / 0.01)):
        if server.started or not thread.is_alive():
            break
        pause.wait(0.01)
    assert server.started, f"uvicorn did not start the app within {6 * LIMIT:g} s"
    try:
        yield f"127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(LIMIT)  # a stuck app must not hang the grader; the thread is a daemon


async def within(awaitable: Awaitable, what: str, limit: float = LIMIT):
    """``await awaitable``, or fail the test saying ``what`` did not happen within ``limit`` seconds."""
    try:
        return await asyncio.wait_for(awaitable, limit)
    except TimeoutError:
        pytest.fail(f"{what} within {limit:g} s", pytrace=False)


class Gate:
    """A blocking call the test controls: it says when it has started, then waits until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.timed_out = False

    def block(self) -> None:
        self.entered.set()
        if not self.released.wait(LIMIT):
            self.timed_out = True   # nobody released us: the test could not get a word in meanwhile

    async def wait_entered(self, what: str) -> None:
        if not await asyncio.to_thread(self.entered.wait, LIMIT):
            pytest.fail(f"{what} was never called within {LIMIT:g} s", pytrace=False)


def parse_sse(text: str) -> list[str]:
    """The data of each event in an SSE body: events end at a blank line; ``data:`` lines are joined."""
    events, data = [], []
    for line in text.split("\n"):
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return events


@points(3, hint="A blocking call inside `async def` holds the event loop: run it with `await asyncio.to_thread(...)` "
                "(or make the route a plain `def`).")
def test_health_answers_while_a_slow_request_runs(student, rng, observe) -> None:
    gate = Gate()
    query = word(rng)

    def lookup(q: str) -> str:
        gate.block()
        return q[::-1]

    async def body() -> None:
        with served(student.create_app(lookup=lookup)) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=3 * LIMIT) as client:
                slow = asyncio.create_task(client.get("/slow", params={"q": query}))
                await gate.wait_entered("lookup")
                health = await client.get("/health")
                answered_while_blocked = not gate.timed_out
                gate.released.set()
                result = (await slow).json()
                observe([health.json(), answered_while_blocked, result])
                assert health.json() == {"status": "ok"}, f"expected /health to answer {{'status': 'ok'}}, got {health.json()}"
                assert answered_while_blocked, ("expected /health to answer while lookup() was blocked; it answered "
                                                f"only after lookup() gave up waiting ({LIMIT:g} s)")
                assert result == {"result": query[::-1]}, f"expected /slow to answer {{'result': {query[::-1]!r}}}, got {result}"

    asyncio.run(body())


@points(1, hint="/slow?q=abc answers {\"result\": lookup(\"abc\")}.")
def test_slow_returns_the_lookup(student, rng, observe) -> None:
    queries = words(rng, rng.randint(2, 4))

    def lookup(q: str) -> str:
        return f"{q[::-1]}:{len(q)}"

    async def body() -> None:
        with served(student.create_app(lookup=lookup)) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=LIMIT) as client:
                answers = await asyncio.gather(*(client.get("/slow", params={"q": q}) for q in queries))
                got = [a.json() for a in answers]
                observe(got)
                expected = [{"result": lookup(q)} for q in queries]
                assert got == expected, f"expected {expected}, got {got}"

    asyncio.run(body())


@points(2, hint="An SSE event is `data: ...` followed by a blank line: each frame ends with two newlines.")
def test_sse_frames_parse(student, rng, observe) -> None:
    n = rng.randint(2, 6)
    tokens = words(rng, n)

    async def body() -> None:
        with served(student.create_app(step=lambda i: tokens[i])) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=LIMIT) as client:
                response = await client.get("/tokens", params={"n": n})
                kind = response.headers["content-type"].split(";")[0]
                events = parse_sse(response.text)
                observe([kind, events])
                assert kind == "text/event-stream", f"expected content-type text/event-stream, got {kind!r}"
                assert events == tokens + ["[DONE]"], f"expected the events {tokens + ['[DONE]']}, got {events}"

    asyncio.run(body())


@points(2, hint="Iterating a blocking generator inside an async generator runs every step on the loop: "
                "await each step in a thread (`await asyncio.to_thread(step, i)`).")
def test_health_answers_while_a_stream_is_blocked_in_a_step(student, rng, observe) -> None:
    gate = Gate()
    n = rng.randint(3, 6)
    tokens = words(rng, n)
    blocked_at = rng.randrange(1, n)

    def step(i: int) -> str:
        if i == blocked_at:
            gate.block()
        return tokens[i]

    async def body() -> None:
        app = student.create_app(step=step)
        with served(app) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=3 * LIMIT) as client:
                stream = asyncio.create_task(client.get("/tokens", params={"n": n}))
                await gate.wait_entered(f"step({blocked_at})")
                health = await client.get("/health")
                answered_while_blocked = not gate.timed_out
                gate.released.set()
                events = parse_sse((await stream).text)
                observe([health.json(), answered_while_blocked, events])
                assert answered_while_blocked, (f"expected /health to answer while step({blocked_at}) was blocked; it "
                                                f"answered only after the step gave up waiting ({LIMIT:g} s)")
                assert events == tokens + ["[DONE]"], f"expected the events {tokens + ['[DONE]']}, got {events}"

    asyncio.run(body())


@points(2, hint="When the client hangs up, Starlette cancels an *async* generator at its next await; a sync "
                "generator iterated in the thread pool is simply abandoned and its `finally` never runs.")
def test_a_disconnect_stops_the_stream(student, rng, observe) -> None:
    n = 2000
    prefix = word(rng)
    read = rng.randint(2, 5)                  # how many events the client reads before it hangs up

    def step(i: int) -> str:
        time.sleep(0.002)    # a token every few milliseconds: the whole stream would take seconds
        return f"{prefix}{i}"

    app = student.create_app(step=step)

    async def body() -> None:
        seen: list[str] = []
        with served(app) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=LIMIT) as client:
                async with client.stream("GET", "/tokens", params={"n": n}) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            seen.append(line[5:].strip())
                        if len(seen) == read:
                            break        # leaving the block closes the connection mid-stream
            for _ in range(int(LIMIT / 0.01)):
                if app.state.open_streams == 0:
                    break
                await asyncio.sleep(0.01)   # polls the app's own counter, bounded by LIMIT
            closed, stopped_early = app.state.open_streams == 0, app.state.produced < n
            observe([seen, closed, stopped_early])
            assert seen == [f"{prefix}{i}" for i in range(read)], f"expected the first {read} tokens, got {seen}"
            assert closed, (f"expected app.state.open_streams to go back to 0 within {LIMIT:g} s of the client "
                            f"leaving; it is {app.state.open_streams}: the stream's generator was never closed")
            assert stopped_early, f"expected the stream to stop when the client left; it made all {n} tokens"

    asyncio.run(body())


async def receive_until(ws, last: set[str], who: str, limit: float = LIMIT) -> list[str]:
    """Frames from ``ws`` up to and including the first one in ``last``; fails the test after ``limit`` s."""
    frames: list[str] = []

    async def receive() -> None:
        while not frames or frames[-1] not in last:
            frames.append(await ws.recv())

    try:
        await asyncio.wait_for(receive(), limit)
    except TimeoutError:
        got = frames if len(frames) < 6 else frames[:3] + ["..."] + frames[-2:]
        pytest.fail(f"{who} got no {' or '.join(sorted(last))} within {limit:g} s (frames so far: {got})",
                    pytrace=False)
    return frames


@points(1, hint="Send each word of the prompt as its own frame, then `[end]`.")
def test_websocket_streams_the_words(student, rng, observe) -> None:
    prompts = [words(rng, rng.randint(1, 5)) for _ in range(2)]

    async def body() -> None:
        with served(student.create_app(tick=0)) as host:
            async with connect(f"ws://{host}/ws", close_timeout=0.5) as ws:
                replies = []
                for prompt in prompts:      # the connection serves one prompt after another
                    await ws.send(" ".join(prompt))
                    replies.append(await receive_until(ws, {"[end]"}, "the client"))
                    assert replies[-1] == prompt + ["[end]"], f"expected {prompt + ['[end]']}, got {replies[-1]}"
                observe(replies)

    asyncio.run(body())


@points(3, hint="Every websocket connection has its own task, but all share one loop: a blocking call in the "
                "handler (the word generator here, the model in ChatGLM-6B) holds every other client until the "
                "reply is done. Run each blocking step in a thread (`await asyncio.to_thread(...)`).")
def test_two_websocket_clients_interleave(student, rng, observe) -> None:
    long_prompt = words(rng, rng.randint(150, 250))     # at tick=0.01: seconds of reply
    short_prompt = words(rng, rng.randint(2, 4))

    async def body() -> None:
        with served(student.create_app(tick=0.01)) as host:
            async with connect(f"ws://{host}/ws", close_timeout=0.5) as first, \
                       connect(f"ws://{host}/ws", close_timeout=0.5) as second:
                first_frames: list[str] = []

                async def read_first() -> None:
                    while not first_frames or first_frames[-1] != "[end]":
                        first_frames.append(await first.recv())

                await first.send(" ".join(long_prompt))
                opening = await within(first.recv(), "the first client got no frame")
                first_frames.append(opening)
                reading = asyncio.create_task(read_first())
                try:
                    await second.send(" ".join(short_prompt))
                    reply = await receive_until(second, {"[end]"}, "the second client, while the first's reply "
                                                "was streaming,", limit=2 * LIMIT)
                    first_had = len(first_frames)       # how far the first reply had come when the second ended
                finally:
                    reading.cancel()
                inside = first_had <= len(long_prompt) // 2
                observe([opening, reply, inside])
                assert reply == short_prompt + ["[end]"], f"expected the second client's reply {short_prompt + ['[end]']}, got {reply}"
                assert inside, (f"expected the second client's short reply to arrive inside the first's "
                                f"{len(long_prompt)}-word reply; the first client already had {first_had} frames "
                                f"when it did: the loop was blocked for the first reply")

    asyncio.run(body())


@points(2, hint="While you write, something must read: start a reader task beside the writer and stop the "
                "writer when the reader sees 'stop' (asyncio.wait with FIRST_COMPLETED).")
def test_stop_interrupts_a_websocket_stream(student, rng, observe) -> None:
    long_prompt = words(rng, rng.randint(150, 250))     # at tick=0.01: seconds of reply
    next_prompt = words(rng, rng.randint(1, 4))

    async def body() -> None:
        with served(student.create_app(tick=0.01)) as host:
            async with connect(f"ws://{host}/ws", close_timeout=0.5) as ws:
                await ws.send(" ".join(long_prompt))
                opening = await within(ws.recv(), "the client got no frame")
                await ws.send("stop")
                frames = [opening] + await receive_until(ws, {"[end]", "[stopped]"}, "the client", limit=2 * LIMIT)
                ending, sent = frames[-1], frames[:-1]
                is_prefix = sent == long_prompt[:len(sent)]
                observe([opening, ending, is_prefix, len(sent) < len(long_prompt)])
                assert ending == "[stopped]", (f"expected [stopped] after 'stop', got {ending!r} after {len(sent)} of "
                                               f"{len(long_prompt)} words: 'stop' was not read while the words were sent")
                assert is_prefix, f"expected the first words of the prompt before [stopped], got {sent[:5]}..."
                await ws.send(" ".join(next_prompt))      # the connection serves the next prompt
                after = await receive_until(ws, {"[end]"}, "the client, after [stopped],")
                observe(after)
                assert after == next_prompt + ["[end]"], f"expected {next_prompt + ['[end]']} after [stopped], got {after}"

    asyncio.run(body())
