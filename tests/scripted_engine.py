"""Test doubles for the transport: a scripted :class:`Engine` and a real uvicorn server in the test's loop.

The transport tests must not depend on a scheduler's timing, so :class:`ScriptedEngine` replies with
fixed text, records every call and every early close, and can hold replies at a gate so a test decides
when a reply goes on. :func:`running_server` serves an app with uvicorn on 127.0.0.1 (port chosen by the
OS) inside the test's own event loop, which is what streaming, disconnects and real clients need.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import httpx
import uvicorn

from corolab.serving.engine.base import (
    Delta, Engine, EngineError, EngineInfo, EngineStats, SamplingParams,
)
from corolab.serving.engine.handle import RequestHandle


@dataclass
class Call:
    messages: list[dict[str, str]]
    params: SamplingParams
    closed_early: bool = False
    finished: bool = False


@dataclass
class ScriptedEngine(Engine):
    """Replies with ``reply(messages)`` split into ``pieces`` deltas; raises ``refuse`` before the first.

    ``gate``: when set, every reply waits on it after its first delta, so a test can hold replies open.
    ``log`` records ``("start", n)``, ``("first", n)``, ``("end", n)`` and ``("closed", n)`` in order.
    """

    reply: Callable[[list[dict[str, str]]], str] = lambda messages: "echo: " + messages[-1]["content"]
    pieces: int = 3
    refuse: EngineError | None = None
    fail_midway: Exception | None = None
    gate: asyncio.Event | None = None
    ready_now: bool = True
    calls: list[Call] = field(default_factory=list)
    log: list[tuple[str, int]] = field(default_factory=list)
    started: bool = False
    stopped: bool = False

    def __post_init__(self) -> None:
        super().__init__()
        self._ready = self.ready_now
        self._running = 0
        self._messages: list[dict[str, str]] = []
        self._tasks: set[asyncio.Task] = set()

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(engine="scripted", model_id="scripted-model", context_window=4096, backend="scripted")

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        self.started = True
        self._ready = True

    async def stop(self) -> None:
        self.stopped = True

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running, requests_finished=sum(c.finished for c in self.calls),
                           tokens_generated=sum(c.params.max_tokens for c in self.calls if c.finished))

    async def tokenize(self, messages: Sequence[dict[str, str]]) -> list[int]:
        self._messages = [dict(m) for m in messages]  # the next submit's conversation
        return [0] * sum(len(m["content"]) for m in messages)

    def submit(self, prompt: list[int], params: SamplingParams) -> RequestHandle:
        if self.refuse is not None:
            raise self.refuse
        call = Call(self._messages, params)
        self.calls.append(call)
        n = len(self.calls)
        withdrawn = asyncio.Event()
        handle = RequestHandle(n, len(prompt), lambda handle: withdrawn.set())
        task = asyncio.get_running_loop().create_task(self._feed(call, n, handle, withdrawn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return handle

    async def _feed(self, call: Call, n: int, handle: RequestHandle, withdrawn: asyncio.Event) -> None:
        """Play the script into the handle; a cancelled handle stops it at the next piece."""
        self.log.append(("start", n))
        text = self.reply(call.messages)
        size = max(1, -(-len(text) // self.pieces))
        chunks = [text[i:i + size] for i in range(0, len(text), size)] or [""]
        self._running += 1
        try:
            for i, chunk in enumerate(chunks):
                if handle.cancelled:
                    return
                last = i == len(chunks) - 1
                handle.put(Delta(chunk, "stop" if last else None, handle.prompt_tokens, i + 1))
                if i == 0:
                    self.log.append(("first", n))
                    if self.fail_midway is not None:
                        handle.put(self.fail_midway)
                        return
                    if self.gate is not None:
                        waits = {asyncio.ensure_future(self.gate.wait()), asyncio.ensure_future(withdrawn.wait())}
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                        for w in waits:
                            w.cancel()
                        if handle.cancelled:
                            return
                await asyncio.sleep(0)
            call.finished = True
            self.log.append(("end", n))
        finally:
            self._running -= 1
            if not call.finished:
                call.closed_early = True
                self.log.append(("closed", n))


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, checking once per loop turn; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def wait_healthy(base: str, timeout: float = 10.0) -> None:
    """Wait until ``GET /health`` says 200: the engine has loaded its model (in the app's lifespan)."""
    async with httpx.AsyncClient(base_url=base) as http, asyncio.timeout(timeout):
        while (await http.get("/health")).status_code != 200:
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_server(app: object) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 with a port the OS picks; yield its base URL; shut down on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_for(lambda: server.started or task.done())
        if task.done():
            task.result()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()
