"""``GET /metrics`` in the Prometheus text format, through ``prometheus_client``.

Histograms are what a load test needs to compare with its client-side view: time to first token as the
server saw it (HTTP and websocket apart), how long each decode step took, and how many requests shared each
step. The engine's counters (running, waiting, tokens, prefix-cache hits) are read at scrape time.

Each app gets its own registry, so two servers in one process (tests, notebooks) never share numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corolab.serving.engine.base import Engine, EngineStats

#: path -> the ``endpoint`` label; anything else is "other", so a scanner cannot blow up the label set
ENDPOINTS = {"/": "page", "/v1/chat/completions": "chat", "/v1/models": "models", "/health": "health",
             "/metrics": "metrics"}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class EngineCollector(Collector):
    """The engine's own numbers, read when /metrics is scraped."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        stats = self.engine.stats()
        yield GaugeMetricFamily("corolab_requests_running", "Requests generating now.", value=stats.running)
        yield GaugeMetricFamily("corolab_requests_waiting", "Requests queued for a batch slot (queue depth).",
                                value=stats.waiting)
        yield CounterMetricFamily("corolab_generated_tokens", "Completion tokens generated.",
                                  value=stats.tokens_generated)
        yield CounterMetricFamily("corolab_requests_finished", "Requests the engine finished.",
                                  value=stats.requests_finished)
        yield CounterMetricFamily("corolab_prefix_cache_hit_tokens",
                                  "Prompt tokens served from the shared-prefix cache instead of prefilled.",
                                  value=stats.prefix_hits)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("corolab_http_requests", "HTTP and websocket requests by endpoint and status.",
                                ["endpoint", "status"], registry=self.registry)
        ttft = Histogram("corolab_time_to_first_token_seconds", "Request arrival to first content token.",
                         ["transport"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.ttft = ttft.labels(transport="http")
        self.ws_ttft = ttft.labels(transport="websocket")
        self.step = Histogram("corolab_decode_step_seconds", "Duration of one decode step of the engine.",
                              buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=self.registry)
        self.batch = Histogram("corolab_batch_size", "Requests advanced by one decode step.",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.registry.register(EngineCollector(engine))
        self.step_seconds: float | None = None  # recent steps, smoothed: how long one takes, how many rows
        self.step_rows = 1.0
        engine.step_listeners.append(self._on_step)

    def _on_step(self, batch_size: int, seconds: float) -> None:
        self.step.observe(seconds)
        self.batch.observe(batch_size)
        if self.step_seconds is None:
            self.step_seconds, self.step_rows = seconds, float(batch_size)
        else:  # an exponential average over about the last ten steps
            self.step_seconds += 0.1 * (seconds - self.step_seconds)
            self.step_rows += 0.1 * (batch_size - self.step_rows)

    def drain_seconds(self, stats: EngineStats, default_reply_tokens: int) -> float:
        """About how long the requests queued now need to reach the model, for ``Retry-After``: each needs
        as many steps as the replies finished so far had tokens (``default_reply_tokens`` before any
        finished), and a step advances as many requests as recent steps did. 0 before the first step."""
        if self.step_seconds is None:
            return 0.0
        finished = stats.requests_finished
        reply = stats.tokens_generated / finished if finished else default_reply_tokens
        return stats.waiting * reply * self.step_seconds / max(1.0, self.step_rows)

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def sample(self, name: str, **labels: str) -> float:
        """One number as /metrics would show it (0 if never observed), e.g.
        ``sample("corolab_http_requests_total", endpoint="chat", status="499")``."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StatusCounter:
    """ASGI middleware: count every HTTP response by endpoint and status, errors from any layer included
    (a 400 from validation, a 401 from the key check, a 404 for a model or a path, a 499 for a client that
    left). An exception that escapes the app counts as the 500 the client then gets. A stream the client
    left before its last event counts as 499, not as the 200 its first line said: Starlette stops a
    streaming response quietly when the client hangs up, so the only trace is a body that never ended."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, ended = 500, False

        async def record(message: dict) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        try:
            await self.app(scope, receive, record)
        except BaseException:
            self.metrics.count(ENDPOINTS.get(scope["path"], "other"), status)
            raise
        self.metrics.count(ENDPOINTS.get(scope["path"], "other"), status if ended else 499)
