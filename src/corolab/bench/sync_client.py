"""The chat request of ``corolab bench``, sent without asyncio: for load generators that are not coroutines.

Locust runs its users as gevent greenlets, where an asyncio event loop has no place. This client sends the
same request as :class:`~corolab.bench.clients.HttpChatClient` (the same body, headers and endpoint) over
``httpx.Client``, whose sockets gevent makes cooperative, and feeds the same
:class:`~corolab.bench.clients.SseReader`, so a record's TTFT, ITL and TPOT mean what they mean in a
one-process run. Like the asyncio client it never raises for a failed request: failures are data.

The whole-request deadline is a parameter (``deadline``): under gevent it is a ``gevent.Timeout``, which
interrupts a read that waits; without one, httpx's own per-read timeout bounds each wait.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx

from .clients import SseReader, chat_body, read_json_reply, request_headers
from .config import BenchConfig
from .dataset import Prompt
from .http import BrokenStream
from .records import BROKEN_STREAM, CONNECT, TIMEOUT, RequestRecord, http_error

Deadline = Callable[[float], AbstractContextManager]


def no_deadline(seconds: float) -> AbstractContextManager:
    """Without a scheduler that can interrupt a read, httpx's per-read timeout is the bound."""
    return contextlib.nullcontext()


class SyncChatClient:
    """``/v1/chat/completions``, streamed (SSE) or not, one request at a time per caller.

    One ``httpx.Client`` keeps up to ``pool_size`` connections alive (no cap with None: a closed-loop
    user holds one at a time), so a Locust worker's users reuse them as ``corolab bench``'s pool does.
    ``deadline(seconds)`` must raise ``TimeoutError`` when a request runs past ``config.timeout``.
    """

    def __init__(self, config: BenchConfig, pool_size: int | None, deadline: Deadline = no_deadline):
        if config.mode == "ws":
            raise ValueError("the synchronous client speaks HTTP; use mode 'stream' or 'nonstream'")
        self.config = config
        self.stream = config.mode == "stream"
        self.url = config.endpoint()
        self.headers = request_headers(config, stream=self.stream)
        self.deadline = deadline
        limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
        self.http = httpx.Client(timeout=config.timeout, limits=limits)

    def request(self, index: int, prompt: Prompt) -> RequestRecord:
        clock = self.config.clock
        body = json.dumps(chat_body(self.config, prompt, stream=self.stream)).encode()
        rec = RequestRecord(index=index, start=clock())
        sent = False
        try:
            with self.deadline(self.config.timeout), \
                    self.http.stream("POST", self.url, content=body, headers=self.headers) as response:
                sent = True
                if response.status_code != 200:
                    detail = response.read()[:200].decode("utf-8", "replace")
                    rec.fail(http_error(response.status_code), detail)
                elif self.stream:
                    reader = SseReader(rec, clock)
                    for data in response.iter_bytes():
                        if reader.feed(data):
                            return rec
                    reader.close()
                else:
                    raw = response.read()
                    read_json_reply(raw, rec, clock())
        except (TimeoutError, httpx.TimeoutException):
            rec.fail(TIMEOUT, f"no complete reply within {self.config.timeout}s")
        except httpx.ConnectError as exc:
            rec.fail(CONNECT, str(exc))
        except (BrokenStream, httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            rec.fail(BROKEN_STREAM, f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            rec.fail(BROKEN_STREAM if sent else CONNECT, str(exc))
        return rec

    def close(self) -> None:
        self.http.close()
