"""Graded tests for Lab 6. The student's app runs under a real uvicorn server in a thread of its own;
the tests are clients with their own event loop. Every assertion is about order (did the health probe
answer before the slow call was let go? did one client's stream finish inside another's?), never about
how many milliseconds something took."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect

from corolab.labs.grading import points

LIMIT = 5.0  # seconds a test may wait for anything; a passing test takes well under one


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free port of 127.0.0.1 in a daemon thread; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    pause = threading.Event()       # never set: its wait() is a sleep that reads as one
    for _ in range(int(6 * LIMIT / 0.01)):
        if server.started or not thread.is_alive():
            break
        pause.wait(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(LIMIT)  # a stuck app must not hang the grader; the thread is a daemon


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 4 * LIMIT))


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

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, LIMIT), "the blocking call never started"


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
def test_health_answers_while_a_slow_request_runs(student) -> None:
    gate = Gate()

    def lookup(query: str) -> str:
        gate.block()
        return query.upper()

    async def body() -> None:
        with served(student.create_app(lookup=lookup)) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=3 * LIMIT) as client:
                slow = asyncio.create_task(client.get("/slow", params={"q": "abc"}))
                await gate.wait_entered()
                health = await client.get("/health")
                answered_while_blocked = not gate.timed_out
                gate.released.set()
                assert health.json() == {"status": "ok"}
                assert answered_while_blocked, "/health waited for the slow call to finish"
                assert (await slow).json() == {"result": "ABC"}

    run(body)


@points(1, hint="/slow?q=abc answers {\"result\": lookup(\"abc\")}.")
def test_slow_returns_the_lookup(student) -> None:
    async def body() -> None:
        with served(student.create_app(lookup=lambda q: q[::-1])) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=LIMIT) as client:
                answers = await asyncio.gather(*(client.get("/slow", params={"q": q}) for q in ["abc", "xyz"]))
                assert [a.json() for a in answers] == [{"result": "cba"}, {"result": "zyx"}]

    run(body)


@points(2, hint="An SSE event is `data: ...` followed by a blank line: each frame ends with two newlines.")
def test_sse_frames_parse(student) -> None:
    async def body() -> None:
        with served(student.create_app(step=lambda i: f"t{i}")) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=LIMIT) as client:
                response = await client.get("/tokens", params={"n": 4})
                assert response.headers["content-type"].startswith("text/event-stream")
                assert parse_sse(response.text) == ["t0", "t1", "t2", "t3", "[DONE]"]

    run(body)


@points(2, hint="Iterating a blocking generator inside an async generator runs every step on the loop: "
                "await each step in a thread (`await asyncio.to_thread(step, i)`).")
def test_health_answers_while_a_stream_is_blocked_in_a_step(student) -> None:
    gate = Gate()

    def step(i: int) -> str:
        if i == 2:
            gate.block()
        return f"t{i}"

    async def body() -> None:
        app = student.create_app(step=step)
        with served(app) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=3 * LIMIT) as client:
                stream = asyncio.create_task(client.get("/tokens", params={"n": 4}))
                await gate.wait_entered()
                health = await client.get("/health")
                answered_while_blocked = not gate.timed_out
                gate.released.set()
                assert health.json() == {"status": "ok"}
                assert answered_while_blocked, "/health waited for the stream's blocking step"
                assert parse_sse((await stream).text)[-1] == "[DONE]"

    run(body)


@points(2, hint="When the client hangs up, Starlette cancels an *async* generator at its next await; a sync "
                "generator iterated in the thread pool is simply abandoned and its `finally` never runs.")
def test_a_disconnect_stops_the_stream(student) -> None:
    n = 2000

    def step(i: int) -> str:
        time.sleep(0.002)    # a token every few milliseconds: the whole stream would take seconds
        return f"t{i}"

    app = student.create_app(step=step)

    async def body() -> None:
        with served(app) as host:
            async with httpx.AsyncClient(base_url=f"http://{host}", timeout=LIMIT) as client:
                async with client.stream("GET", "/tokens", params={"n": n}) as response:
                    seen = 0
                    async for line in response.aiter_lines():
                        seen += line.startswith("data:")
                        if seen == 3:
                            break        # leaving the block closes the connection mid-stream
            for _ in range(int(LIMIT / 0.01)):
                if app.state.open_streams == 0:
                    break
                await asyncio.sleep(0.01)   # polls the app's own counter, bounded by LIMIT
            assert app.state.open_streams == 0, "the stream's generator was never closed after the client left"
            assert app.state.produced < n, "the stream ran to the end with nobody listening"

    run(body)


async def receive_until(ws, last: set[str]) -> list[str]:
    """Frames from ``ws`` up to and including the first one in ``last``; TimeoutError after LIMIT in all."""
    frames: list[str] = []
    async with asyncio.timeout(LIMIT):
        while not frames or frames[-1] not in last:
            frames.append(await ws.recv())
    return frames


@points(1, hint="Send each word of the prompt as its own frame, then `[end]`.")
def test_websocket_streams_the_words(student) -> None:
    async def body() -> None:
        with served(student.create_app(tick=0)) as host:
            async with connect(f"ws://{host}/ws", close_timeout=0.5) as ws:
                await ws.send("one two three")
                assert await receive_until(ws, {"[end]"}) == ["one", "two", "three", "[end]"]
                await ws.send("again")
                assert await receive_until(ws, {"[end]"}) == ["again", "[end]"]

    run(body)


@points(3, hint="FastAPI runs every websocket connection in its own task. Hold nothing (a lock, a blocking call) "
                "for a whole session, or the second client waits for the first to leave.")
def test_two_websocket_clients_interleave(student) -> None:
    async def body() -> None:
        with served(student.create_app(tick=0.01)) as host:
            async with connect(f"ws://{host}/ws", close_timeout=0.5) as alice, connect(f"ws://{host}/ws", close_timeout=0.5) as bob:
                await alice.send(" ".join(f"a{i}" for i in range(2000)))   # a long reply: about 20 s
                assert await asyncio.wait_for(alice.recv(), LIMIT) == "a0"
                await bob.send("b0 b1")
                try:
                    assert await receive_until(bob, {"[end]"}) == ["b0", "b1", "[end]"]
                except TimeoutError:
                    pytest.fail("bob got no reply while alice's was streaming", pytrace=False)
                await alice.send("stop")
                frames = await receive_until(alice, {"[end]", "[stopped]"})
                assert frames[-1] == "[stopped]", "bob's reply did not come in the middle of alice's"

    run(body)


@points(2, hint="While you write, something must read: start a reader task beside the writer and stop the "
                "writer when the reader sees 'stop' (asyncio.wait with FIRST_COMPLETED).")
def test_stop_interrupts_a_websocket_stream(student) -> None:
    async def body() -> None:
        with served(student.create_app(tick=0.01)) as host:
            async with connect(f"ws://{host}/ws", close_timeout=0.5) as ws:
                words = [f"w{i}" for i in range(2000)]
                await ws.send(" ".join(words))
                assert await asyncio.wait_for(ws.recv(), LIMIT) == "w0"
                await ws.send("stop")
                try:
                    frames = await receive_until(ws, {"[end]", "[stopped]"})
                except TimeoutError:
                    pytest.fail("'stop' was not read while the words were being sent", pytrace=False)
                assert frames[-1] == "[stopped]" and len(frames) < len(words)
                await ws.send("still here")      # the connection serves the next prompt
                assert await receive_until(ws, {"[end]"}) == ["still", "here", "[end]"]

    run(body)
