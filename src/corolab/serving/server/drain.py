"""The drain: what ``corolab serve`` does between SIGTERM (or Ctrl-C) and uvicorn's own shutdown.

Left to itself, uvicorn stops by closing its listening socket, letting each HTTP response run to its end
(for as long as ``timeout_graceful_shutdown`` allows, for ever by default) and closing every websocket at
once with code 1012. For a chat server that is wrong both ways: one long reply holds the shutdown for
minutes, and a websocket client loses its reply with no word why. So the server drains first, while it
still listens (:class:`Drain`):

1. Admission closes. The engine refuses every new request (503, ``Retry-After``, code ``shutting_down``);
   ``/health`` says 503 "draining", so a load balancer stops sending; a new websocket is accepted and closed
   with 1001 ("going away"), and so is an open one with no reply running.
2. Replies already admitted go on for up to ``drain_timeout`` seconds, and end as usual, with their finish
   event (or ``{"status": 200}``, or a 200).
3. A reply still running then is ended by the server (:meth:`RequestHandle.abort
   <corolab.serving.engine.handle.RequestHandle.abort>`): the engine drops it, and its client gets an error
   event, an error frame or a 503, never a finish event. A finish reason would tell the client the reply
   is complete; an error says it is not, and why, so a client can retry it elsewhere (OpenAI's client
   raises ``APIError`` on an error event).
4. The transports write those last events and close their websockets with 1001, within
   :data:`WRITE_GRACE`. Then uvicorn's shutdown runs with nothing left to wait for, and the app's lifespan
   stops the engine.

A second signal cuts step 2 short: every running reply gets its error event at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from corolab.serving.engine.base import Engine, ShuttingDownError
from corolab.serving.engine.handle import RequestHandle

#: uvicorn's own logger: the drain is the first part of the server's shutdown, and logs beside it.
log = logging.getLogger("uvicorn.error")

#: Seconds the transports get, once every reply has ended, to write their last events and close their
#: websockets (uvicorn's ``timeout_graceful_shutdown`` is the same, :mod:`~corolab.serving.server.uvicorn_setup`).
#: Writing one event takes microseconds; only a client that stopped reading needs longer, and it does not get it.
WRITE_GRACE = 2.0

#: The reason in the close frame (code 1001, "going away") of a websocket the drain closes.
GOING_AWAY = "the server is shutting down"


@dataclass
class DrainReport:
    """What one drain did: the server logs it, and the book reads it."""

    running: int = 0        # replies admitted and not yet ended when the drain began
    aborted: int = 0        # of those, still running at the deadline: ended with an error
    websockets: int = 0     # websocket connections open when the drain began, each closed with 1001
    seconds: float = 0.0    # from the drain's start until every reply had ended and every websocket closed
    hurried: bool = False   # a second signal cut the wait short
    complete: bool = True   # False if a transport had not finished writing within WRITE_GRACE

    @property
    def finished(self) -> int:
        """Replies that ended on their own during the drain."""
        return self.running - self.aborted


class Drain:
    """The server's drain: which replies and websockets are still open, and the steps that end them.

    The transports report to it: :func:`~corolab.serving.server.admission.admit` tracks every admitted
    reply and the transport :meth:`release`\\ s it once its last byte is written; each websocket holds
    :meth:`websocket` for its whole life. It owns nothing bound to an event loop until :meth:`begin`,
    so one app can be served by several loops in turn (tests do).
    """

    def __init__(self, engine: Engine, timeout: float) -> None:
        self.engine, self.timeout = engine, timeout
        self.draining = False
        self.hurried = False
        self.report: DrainReport | None = None
        self._replies: set[RequestHandle] = set()
        self._sockets: set[asyncio.Event] = set()
        self._wake: asyncio.Event | None = None  # created by the drain itself, on its own loop
        self._task: asyncio.Task[DrainReport] | None = None

    # -- what the transports call -------------------------------------------------------------------------

    def track(self, handle: RequestHandle) -> None:
        self._replies.add(handle)

    def release(self, handle: RequestHandle) -> None:
        """The transport has written this reply's last event (or its client left)."""
        self._replies.discard(handle)
        self._changed()

    @contextlib.contextmanager
    def websocket(self) -> Iterator[asyncio.Event]:
        """Hold for a websocket connection's whole life. The event is set when the drain begins (at once if it
        has), and the drain waits for every connection to close."""
        going_away = asyncio.Event()
        if self.draining:
            going_away.set()
        self._sockets.add(going_away)
        try:
            yield going_away
        finally:
            self._sockets.discard(going_away)
            self._changed()

    @property
    def retry_after(self) -> float:
        """What a refused or cut client is told to wait: by then this process has gone, and a restarted
        server, or another one behind the same address, answers."""
        return self.timeout + WRITE_GRACE

    # -- the drain ----------------------------------------------------------------------------------------

    def begin(self) -> asyncio.Task[DrainReport]:
        """Start draining, once; later calls return the same task."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="corolab-drain")
        return self._task

    async def run(self) -> DrainReport:
        """Drain (or wait for the drain already under way) and return its report."""
        return await asyncio.shield(self.begin())

    def hurry(self) -> None:
        """End the wait for running replies now: they get their error events at once."""
        self.hurried = True
        self._changed()

    async def _run(self) -> DrainReport:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._wake = asyncio.Event()
        self.draining = True                                   # step 1: /health says 503, websockets go away
        self.engine.stop_admitting(retry_after=self.retry_after)
        for going_away in self._sockets:
            going_away.set()
        report = DrainReport(running=len(self._replies), websockets=len(self._sockets))
        log.info("draining: %d replies running, %d websockets open; replies have %g s to finish",
                 report.running, report.websockets, self.timeout)

        await self._until(lambda: not self._replies or self.hurried, started + self.timeout)     # step 2
        cut = ShuttingDownError("the server shut down before this reply was complete", retry_after=self.retry_after)
        for handle in list(self._replies):                                                       # step 3
            if not (handle.finished or handle.cancelled or handle.aborted):
                handle.abort(cut)
                report.aborted += 1
        report.complete = await self._until(lambda: not (self._replies or self._sockets),        # step 4
                                            loop.time() + WRITE_GRACE)
        report.seconds, report.hurried = loop.time() - started, self.hurried
        self.report = report
        log.info("drained in %.2f s: %d replies finished, %d ended with an error, %d websockets closed%s",
                 report.seconds, report.finished, report.aborted, report.websockets,
                 "" if report.complete else f"; some transports were still writing after {WRITE_GRACE:g} s")
        return report

    async def _until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``done()`` or the deadline, waking on every change; return ``done()``."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while not done() and (left := deadline - loop.time()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)
        return done()

    def _changed(self) -> None:
        if self._wake is not None:
            self._wake.set()


__all__ = ["GOING_AWAY", "WRITE_GRACE", "Drain", "DrainReport"]
