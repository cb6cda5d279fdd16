"""What one load test is asked to do, in one value that a notebook can build, print and reuse.

Everything a run depends on lives here, including the clock and the sleep function: tests inject fake
ones so TTFT, ITL and Poisson arrivals can be asserted exactly without waiting for real time to pass.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

Mode = Literal["stream", "nonstream", "ws"]
Transport = Literal["raw", "httpx"]
MODES: tuple[str, ...] = ("stream", "nonstream", "ws")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class BenchConfig:
    """One load test: the target, the load shape(s), the prompts and the limits.

    Give ``concurrency`` (closed loop: that many requests always in flight) or ``rate`` (open loop:
    Poisson arrivals at that many requests/s, at most ``max_concurrency`` in flight). A sequence in
    either field is a sweep: one run per value, same prompts, one result.

    A run stops by itself: after ``requests`` requests, or once ``duration`` seconds have passed (no new
    request starts after that; the ones in flight finish or hit ``timeout``), whichever comes first.
    """

    url: str = "http://127.0.0.1:8000"
    model: str = "fake"
    mode: Mode = "stream"
    concurrency: Sequence[int] | int | None = None
    rate: Sequence[float] | float | None = None
    max_concurrency: int = 256
    requests: int | None = 100
    duration: float | None = None
    prompt_tokens: int = 32
    max_tokens: int = 32
    dataset: str | None = None
    seed: int = 0
    temperature: float = 0.0
    ignore_eos: bool = False  # vLLM extension: force exactly max_tokens; other servers may reject it
    ttft_limit: float | None = None  # seconds; goodput counts requests within both limits
    tpot_limit: float | None = None  # seconds
    timeout: float = 60.0  # per request, first byte to last
    api_key: str | None = None
    transport: Transport = "raw"
    progress: bool = True
    heartbeat_interval: float = 0.01
    extra_body: dict = field(default_factory=dict)
    clock: Clock = time.perf_counter
    sleep: Sleep = asyncio.sleep

    def levels(self) -> list[tuple[str, float]]:
        """The sweep as ``[("concurrency", 8), ...]`` or ``[("rate", 2.0), ...]``."""
        if self.concurrency is not None and self.rate is not None:
            raise ValueError("give concurrency or rate, not both")
        if self.rate is not None:
            rates = [self.rate] if isinstance(self.rate, int | float) else list(self.rate)
            if any(r <= 0 for r in rates):
                raise ValueError("rates must be positive")
            return [("rate", float(r)) for r in rates]
        conc = self.concurrency if self.concurrency is not None else 1
        values = [conc] if isinstance(conc, int) else list(conc)
        if any(c < 1 for c in values):
            raise ValueError("concurrency must be at least 1")
        return [("concurrency", int(c)) for c in values]

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.requests is None and self.duration is None:
            raise ValueError("a run must be bounded: give requests and/or duration")
        self.levels()

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get("OPENAI_API_KEY") or None

    def endpoint(self) -> str:
        return endpoint_url(self.url, self.mode)

    def describe(self) -> dict:
        """The settings that explain a result (no callables, no secrets), for JSON reports."""
        skip = {"clock", "sleep", "api_key"}
        out = {k: v for k, v in self.__dict__.items() if k not in skip}
        out["endpoint"] = self.endpoint()
        for key in ("concurrency", "rate"):
            if out[key] is not None and not isinstance(out[key], int | float):
                out[key] = list(out[key])
        return out


def endpoint_url(url: str, mode: str) -> str:
    """Accept a base URL (``http://host:8000``, ``.../v1``) or a full endpoint and return the endpoint.

    HTTP modes go to ``/v1/chat/completions``; ``ws`` goes to ``/ws/chat`` with a ``ws://`` scheme.
    """
    parts = urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path.rstrip("/")
    if mode == "ws":
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        if not path or path == "/v1" or path.endswith("/chat/completions"):
            path = "/ws/chat"
        return urlunsplit((scheme, parts.netloc, path, parts.query, ""))
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if not path.endswith("/chat/completions"):
        if path.endswith("/ws/chat"):
            path = path[: -len("/ws/chat")]
        path = path + ("/chat/completions" if path.endswith("/v1") else "/v1/chat/completions")
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))
