"""``GET /metrics`` in the Prometheus text format, with no dependency: a few counters and histograms.

Histograms are what a load test needs to compare with its client-side view: time to first token as the
server saw it, how long each decode step took, and how many requests shared each step.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from typing import Any

from corolab.engine.base import Engine

#: path -> the ``endpoint`` label; anything else is "other", so a scanner cannot blow up the label set
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/models": "models", "/health": "health", "/metrics": "metrics"}


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.n}')
        lines += [f"{self.name}_sum {self.total:.6f}", f"{self.name}_count {self.n}"]
        return lines


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> count
        self.ttft = Histogram("corolab_time_to_first_token_seconds", "Request arrival to first content token.",
                              (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.step = Histogram("corolab_decode_step_seconds", "Duration of one decode step of the engine.",
                              (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
        self.batch = Histogram("corolab_batch_size", "Requests advanced by one decode step.",
                               (1, 2, 4, 8, 16, 32, 64, 128, 256))
        engine.step_listeners.append(self._on_step)

    def _on_step(self, batch_size: int, seconds: float) -> None:
        self.step.observe(seconds)
        self.batch.observe(batch_size)

    def count(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def render(self) -> str:
        stats = self.engine.stats()
        gauges: list[tuple[str, str, str, Callable[[], float]]] = [
            ("corolab_requests_running", "gauge", "Requests generating now.", lambda: stats.running),
            ("corolab_requests_waiting", "gauge", "Requests queued for a batch slot.", lambda: stats.waiting),
            ("corolab_generated_tokens_total", "counter", "Completion tokens generated.", lambda: stats.tokens_generated),
            ("corolab_requests_finished_total", "counter", "Requests the engine finished.", lambda: stats.requests_finished),
        ]
        lines = ["# HELP corolab_http_requests_total HTTP and websocket requests by endpoint and status.",
                 "# TYPE corolab_http_requests_total counter"]
        for (endpoint, status), n in sorted(self.requests.items()):
            lines.append(f'corolab_http_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
        for name, kind, help_text, value in gauges:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value()}"]
        for histogram in (self.ttft, self.step, self.batch):
            lines += histogram.render()
        return "\n".join(lines) + "\n"


class StatusCounter:
    """ASGI middleware: count every HTTP response by endpoint and status, errors from any layer included
    (a 400 from validation, a 401 from the key check, a 404 for a model or a path, a 499 for a client that
    left). An exception that escapes the app counts as the 500 the client then gets."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.count(ENDPOINTS.get(scope["path"], "other"), status)
