"""Stopping ``corolab serve``: SIGTERM or SIGINT while replies stream, and what every client gets.

The contract (``corolab.serving.server.drain``): admission closes at once (a new request gets 503 with
``Retry-After``, a new or idle websocket a close frame 1001); every reply already running ends with exactly one
last event, its finish event if it completes within ``--drain-timeout``, else an error event (an error frame
on a websocket); then the process exits with status 0, and nothing of it is left running.

The servers here are real ``corolab serve`` subprocesses on the fake model (50 ms a step). Nothing waits on
a clock to synchronise: the signal is sent once every stream has shown its first token, and the drain is
known to have begun when an idle websocket receives its close frame.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import websockets
from scripted_engine import ScriptedEngine, running_server, wait_for, wait_healthy
from test_background import alive, assert_stopped

from corolab.serving.backends.fake import FakeBackend
from corolab.serving.config import ServeConfig
from corolab.serving.engine import ENGINE_KINDS, SamplingParams, ShuttingDownError, create_engine
from corolab.serving.server.app import create_app
from corolab.serving.server.drain import GOING_AWAY, WRITE_GRACE
from corolab.serving.server.errors import from_engine_error
from corolab.teach.background import BackgroundServer

SHORT, LONG = 40, 2000  # tokens: 2 s of 50 ms steps (ends within the 3 s drain), and 100 s: more than any drain


@dataclass
class Stream:
    """What one client saw: when its first token came, how its reply ended, and when."""

    name: str
    transport: str                              # "sse" or "ws"
    max_tokens: int
    first_token: asyncio.Event = field(default_factory=asyncio.Event)
    tokens: int = 0
    last: list[str] = field(default_factory=list)   # the terminal events, in order: "finish", "error", "[DONE]"
    error: dict | None = None
    close_code: int | None = None               # websockets: the server's close frame
    clean: bool = False                         # the stream ended as its protocol says (no cut connection)
    ended_at: float = 0.0


def chat(text: str, max_tokens: int) -> dict:
    return {"model": "fake", "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": text}]}


async def sse_stream(url: str, s: Stream) -> Stream:
    """One SSE reply: content chunks, then exactly one finish chunk or error event, then ``[DONE]``."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async with client.stream("POST", "/v1/chat/completions", json=chat(s.name, s.max_tokens)) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        s.last.append("[DONE]")
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        s.last.append("error")
                        s.error = chunk["error"]
                    elif chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                        s.last.append("finish")
                    elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        s.tokens += 1
                        s.first_token.set()
        s.clean = True
    except httpx.HTTPError as exc:  # a connection cut mid-body: not clean
        s.last.append(f"cut: {exc!r}")
    s.ended_at = time.perf_counter()
    return s


async def ws_stream(url: str, s: Stream) -> Stream:
    """One reply over ChatGLM-6B's protocol: frames ``{response, history, status: 202}``, then ``{status: 200}``
    or corolab's error frame ``{status: 503, error}``; then the server's close frame."""
    async with websockets.connect(url.replace("http", "ws") + "/ws") as ws:
        await ws.send(json.dumps({"query": s.name, "history": [], "max_tokens": s.max_tokens, "ignore_eos": True}))
        try:
            while True:
                frame = json.loads(await ws.recv())
                if frame["status"] == 202:
                    assert frame["history"][-1] == [s.name, frame["response"]]
                    s.tokens += 1
                    s.first_token.set()
                elif frame["status"] == 200:
                    s.last.append("finish")
                else:
                    s.last.append("error")
                    s.error = frame["error"]
        except websockets.ConnectionClosed as exc:
            s.close_code = exc.rcvd.code if exc.rcvd else None
            s.clean = exc.rcvd is not None
    s.ended_at = time.perf_counter()
    return s


async def closed_with(ws: websockets.ClientConnection) -> tuple[int, str]:
    """Wait for the server's close frame on a websocket that sends nothing; return its code and reason."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None, "the connection was cut without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def drain_line(log: str) -> tuple[int, int, int]:
    """(finished, ended with an error, websockets closed) from the server's log line."""
    found = re.search(r"drained in [\d.]+ s: (\d+) replies finished, (\d+) ended with an error, (\d+) websockets", log)
    assert found, f"no drain line in the server's log:\n{log}"
    return tuple(int(g) for g in found.groups())  # type: ignore[return-value]


def group_members(pgid: int) -> list[int]:
    """Processes still in the server's process group (BackgroundServer starts it in a session of its own)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_during_eight_streams_ends_each_with_a_last_event(sig: signal.Signals) -> None:
    drain = 3.0
    server = BackgroundServer(model="fake:0.05", args=["--drain-timeout", str(drain), "--log-level", "info"]).start()
    try:
        await server.wait_ready_async()
        proc, url = server.process, server.url
        assert proc is not None
        # 8 streams: SSE and ChatGLM websockets, short replies (they finish within the drain) and long ones
        streams = [Stream(f"{t}-{i}-{'short' if i % 2 else 'long'}", t, SHORT if i % 2 else LONG)
                   for i, t in enumerate(["sse", "sse", "sse", "sse", "sse", "ws", "ws", "ws"])]
        tasks = [asyncio.create_task((sse_stream if s.transport == "sse" else ws_stream)(url, s)) for s in streams]
        idle = await websockets.connect(url.replace("http", "ws") + "/ws")  # connected, asks nothing
        async with asyncio.timeout(30):
            await asyncio.gather(*(s.first_token.wait() for s in streams))   # all 8 are streaming

        signalled = time.perf_counter()
        proc.send_signal(sig)
        async with asyncio.timeout(10):
            code, reason = await closed_with(idle)           # the drain has begun: the idle websocket goes away
        assert (code, reason) == (1001, GOING_AWAY)
        assert not any(t.done() for t, s in zip(tasks, streams) if s.max_tokens == LONG)   # they still stream

        async with httpx.AsyncClient(base_url=url, timeout=10) as client:   # still listening, not admitting
            late = await client.post("/v1/chat/completions", json=chat("too late", 5) | {"stream": False})
            health = await client.get("/health")
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        assert int(late.headers["Retry-After"]) == math.ceil(drain + WRITE_GRACE)
        assert health.status_code == 503 and health.json()["status"] == "draining"
        async with websockets.connect(url.replace("http", "ws") + "/ws") as newcomer:
            assert await closed_with(newcomer) == (1001, GOING_AWAY)

        async with asyncio.timeout(drain + 10):
            done = await asyncio.gather(*tasks)
        rc = await asyncio.to_thread(proc.wait, 15)
        exited = time.perf_counter()
        log = server.log_path.read_text()  # type: ignore[union-attr]
    finally:
        pid, port = (server.process.pid if server.process else None), server.port
        server.stop()

    for s in done:
        assert s.clean, f"{s.name}: {s.last}"
        ending = [e for e in s.last if e != "[DONE]"]
        assert len(ending) == 1, f"{s.name} must end with one finish or error event, not {s.last}"
        if s.transport == "sse":
            assert s.last[-1] == "[DONE]" and s.last.count("[DONE]") == 1
        else:
            assert s.close_code == 1001
        if s.max_tokens == SHORT:   # completes within the drain: its own finish, every token delivered
            assert ending == ["finish"] and s.tokens >= 1
        else:                       # still running at the deadline: ended by the server, saying so
            assert ending == ["error"], s.last
            assert s.error is not None and s.error["code"] == "shutting_down"
            assert s.error["type"] == "service_unavailable"
            assert drain <= s.ended_at - signalled < drain + WRITE_GRACE + 3
    assert rc == 0
    assert exited - signalled < drain + WRITE_GRACE + 5
    assert drain_line(log) == (4, 4, 4)   # the server's own count: 4 finished, 4 cut, 3 + the idle websocket
    assert "Traceback" not in log
    assert pid is not None and not alive(pid) and group_members(pid) == []
    assert_stopped(pid, port)


async def test_a_second_signal_ends_the_running_replies_at_once() -> None:
    server = BackgroundServer(model="fake:0.05", args=["--drain-timeout", "60"]).start()
    try:
        await server.wait_ready_async()
        proc, url = server.process, server.url
        assert proc is not None
        streams = [Stream("sse-long", "sse", LONG), Stream("ws-long", "ws", LONG)]
        tasks = [asyncio.create_task(sse_stream(url, streams[0])), asyncio.create_task(ws_stream(url, streams[1]))]
        idle = await websockets.connect(url.replace("http", "ws") + "/ws")
        async with asyncio.timeout(30):
            await asyncio.gather(*(s.first_token.wait() for s in streams))
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert (await closed_with(idle))[0] == 1001
        hurried = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):   # not 60 s
            done = await asyncio.gather(*tasks)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        assert time.perf_counter() - hurried < WRITE_GRACE + 5
    finally:
        server.stop()
    assert [[e for e in s.last if e != "[DONE]"] for s in done] == [["error"], ["error"]]
    assert done[1].close_code == 1001


# -- in-process: the pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ENGINE_KINDS)
async def test_abort_delivers_the_error_after_the_deltas_and_the_engine_drops_the_request(kind: str) -> None:
    engine = create_engine(kind, FakeBackend(step_delay=0.001))
    await engine.start()
    try:
        prompt = await engine.tokenize([{"role": "user", "content": "hello"}])
        handle = engine.submit(prompt, SamplingParams(max_tokens=2000, ignore_eos=True))
        assert (await anext(handle)).text
        handle.abort(ShuttingDownError("cut", retry_after=3))
        handle.abort(ShuttingDownError("twice"))  # a no-op
        with pytest.raises(ShuttingDownError, match="cut"):
            async for _ in handle:  # any delta already delivered first, then the error
                pass
        assert handle.finished and handle.aborted and not handle.cancelled
        handle.cancel()  # what a transport's finally does: nothing more happens
        await wait_for(lambda: engine.stats().running == 0)  # the engine let go of it
    finally:
        await engine.stop()


async def test_stop_admitting_refuses_with_503_and_retry_after() -> None:
    engine = create_engine("batched", FakeBackend())
    await engine.start()
    try:
        assert engine.admitting
        engine.stop_admitting(retry_after=6.5)
        assert not engine.admitting
        with pytest.raises(ShuttingDownError) as refused:
            engine.submit([1, 2, 3], SamplingParams(max_tokens=4))
        api = from_engine_error(refused.value)
        assert (api.status, api.code, api.headers) == (503, "shutting_down", {"Retry-After": "7"})
    finally:
        await engine.stop()


def test_drain_timeout_is_a_setting_with_a_flag() -> None:
    from corolab import cli
    from corolab.serving.server.cli import config_from

    parser = cli.build_parser(only="serve")
    assert config_from(parser.parse_args(["serve"])).drain_timeout == ServeConfig().drain_timeout
    assert config_from(parser.parse_args(["serve", "--drain-timeout", "0"])).drain_timeout == 0
    with pytest.raises(ValueError, match="--drain-timeout must be at least 0"):
        ServeConfig(drain_timeout=-1).validate()


async def test_the_drain_refuses_new_requests_and_cuts_a_reply_at_the_deadline() -> None:
    """Without signals: the app's drain, run by hand on an app served in the test's loop. A non-streamed reply
    held past the deadline gets a 503 with Retry-After, and a request during the drain is refused."""
    gate = asyncio.Event()
    engine = ScriptedEngine(gate=gate)
    app = create_app(engine, drain_timeout=0.5)
    drain = app.state.corolab.drain
    async with running_server(app) as url:
        await wait_healthy(url)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            body = {"model": "scripted-model", "messages": [{"role": "user", "content": "hi"}]}
            first = asyncio.create_task(client.post("/v1/chat/completions", json=body))
            await wait_for(lambda: ("first", 1) in engine.log)   # the reply is running, held at the gate
            running = asyncio.create_task(drain.run())
            await wait_for(lambda: drain.draining)
            refused = await client.post("/v1/chat/completions", json=body)
            cut = await first
            report = await running
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    assert cut.status_code == 503 and cut.headers["Retry-After"] == str(math.ceil(0.5 + WRITE_GRACE))
    assert "before this reply was complete" in cut.json()["error"]["message"]
    assert (report.running, report.aborted, report.finished, report.complete) == (1, 1, 0, True)
    assert 0.5 <= report.seconds < 0.5 + WRITE_GRACE
