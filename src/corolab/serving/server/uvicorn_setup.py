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
"""

from __future__ import annotations

import asyncio
import copy
import functools
from typing import Any

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from corolab.serving.config import ServeConfig
from corolab.serving.server.redact import RedactKeys


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


def uvicorn_config(app: Any, config: ServeConfig, **overrides: Any) -> uvicorn.Config:
    """The uvicorn settings for ``app`` served with ``config``; ``overrides`` win (tests pass a port)."""
    options: dict[str, Any] = {
        "host": config.host, "port": config.port, "log_level": config.log_level,
        "http": functools.partial(HeaderDeadline, header_timeout=config.header_timeout),
        "ws_max_size": config.max_body_bytes,
        "log_config": log_config(config.api_key),
    }
    return uvicorn.Config(app, **{**options, **overrides})


__all__ = ["HeaderDeadline", "log_config", "uvicorn_config"]
