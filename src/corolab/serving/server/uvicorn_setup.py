"""What uvicorn is told: the settings of :class:`~corolab.serving.config.ServeConfig` that only the server below the
app can enforce, in one :func:`uvicorn_config`.

- **Frames.** ``ws_max_size`` is ``max_body_bytes``: a websocket frame over the cap is refused by the
  websocket protocol itself (close code 1009, "message too big") as soon as its header announces the
  length, before its payload is buffered. (uvicorn's own default is 16 MiB, checked before the app's.)
- **Slow clients.** uvicorn 0.54 has no deadline for a request's headers (:class:`HeaderDeadline`); the
  body's deadline is the app's (:mod:`corolab.serving.server.limits`).
- **Keys in logs.** Every handler of the log configuration redacts API keys (:class:`RedactKeys`), so no
  line carries one on any logger: uvicorn logs websocket handshakes, with their query string, on
  ``uvicorn.error``, not on the access log.
- **Stopping.** SIGTERM and SIGINT (Ctrl-C) start the app's drain while the server still listens
  (:class:`DrainingServer`, :mod:`corolab.serving.server.drain`); uvicorn's own shutdown runs after it, its
  wait for open connections bounded by ``timeout_graceful_shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from corolab.serving.config import ServeConfig
from corolab.serving.server.drain import WRITE_GRACE, Drain
from corolab.serving.server.redact import RedactKeys

log = logging.getLogger("uvicorn.error")

#: The signals that stop the server: SIGTERM (``kill``, a container runtime, systemd) and SIGINT (Ctrl-C).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def log_config(api_key: str | None) -> dict[str, Any]:
    """uvicorn's own log configuration, with :class:`RedactKeys` on each handler, and the root logger (every
    other library's warnings) sent through the same redacting handler."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactKeys, "secret": api_key}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request's headers.

    uvicorn 0.54 has no such option: ``timeout_keep_alive`` runs only between requests and any byte cancels
    it, so a client that sent one byte every few seconds held its connection for ever. Here the clock starts
    when a connection opens (and again when a response completes on a kept-alive one) and stops when the
    request's headers are complete; if it runs out first, the connection is closed. Bytes that trickle in
    do not restart it.
    """

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._deadline: asyncio.TimerHandle | None = None

    def _start_clock(self) -> None:
        self._stop_clock()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_clock()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in (or the request failed, or upgraded)
            self._stop_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._start_clock()  # a kept-alive connection waits for the next request's headers

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before its shutdown: the first SIGTERM or SIGINT closes admission and
    lets running replies finish within ``drain_timeout`` (:class:`~corolab.serving.server.drain.Drain`),
    then uvicorn stops as usual; a second signal ends the replies still running at once, each with its
    error event.

    uvicorn 0.54 installs its handlers with ``signal.signal`` and, once stopped, raises the signal again
    with the previous handler back: SIGTERM then kills the process (exit status -15) and SIGINT raises
    KeyboardInterrupt out of ``asyncio.run`` (a traceback on every Ctrl-C). Here the handlers are the event
    loop's (``loop.add_signal_handler``): they run as ordinary callbacks on the loop, between other
    callbacks, so they may start tasks; the previous handlers come back when the server stops, and a
    drained server returns normally (``corolab serve`` exits 0). Setting ``should_exit`` drains too.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self.signals: list[int] = []  # the stop signals received, in order

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            yield
            return
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.on_signal, sig)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                if handler is not None:  # None: a handler not installed from Python, which cannot be put back
                    signal.signal(sig, handler)

    def on_signal(self, sig: int) -> None:
        """On the event loop: the first signal starts the drain now (admission closes at once), and tells
        uvicorn's main loop to stop, which awaits the drain in :meth:`shutdown`; a later one hurries it."""
        self.signals.append(sig)
        if len(self.signals) == 1:
            log.info("%s: draining, then shutting down (repeat it to end running replies now)",
                     signal.Signals(sig).name)
            self.drain.begin()
            self.should_exit = True
        else:
            self.drain.hurry()

    async def shutdown(self, sockets: Any = None) -> None:
        if not self.force_exit:
            await self.drain.run()  # still listening: new requests get a 503, not a refused connection
        await super().shutdown(sockets=sockets)


def uvicorn_config(app: Any, config: ServeConfig, **overrides: Any) -> uvicorn.Config:
    """The uvicorn settings for ``app`` served with ``config``; ``overrides`` win (tests pass a port)."""
    options: dict[str, Any] = {
        "host": config.host, "port": config.port, "log_level": config.log_level,
        "http": functools.partial(HeaderDeadline, header_timeout=config.header_timeout),
        "ws_max_size": config.max_body_bytes,
        "log_config": log_config(config.api_key),
        "timeout_graceful_shutdown": WRITE_GRACE,  # after the drain, nothing should be left to wait for
    }
    return uvicorn.Config(app, **{**options, **overrides})


__all__ = ["STOP_SIGNALS", "DrainingServer", "HeaderDeadline", "log_config", "uvicorn_config"]
