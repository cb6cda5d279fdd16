"""What one request left behind: the timestamps the metrics are computed from, and how it failed.

Timestamps are raw clock readings, not durations, so metrics stay pure functions of records and a test
can check them against a scripted clock. The client reads the clock once when it sends the request and
once per event it receives (an SSE event, a websocket frame, or the whole body when not streaming).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Error kinds, as reported per run. ``http_<status>`` is built from the status code.
TIMEOUT = "timeout"
BROKEN_STREAM = "broken_stream"
CONNECT = "connect"


def http_error(status: int) -> str:
    return f"http_{status}"


@dataclass
class RequestRecord:
    """One request as the client saw it."""

    index: int
    start: float
    first_token: float | None = None  # first event that carried content
    end: float | None = None  # last event received
    chunk_times: list[float] = field(default_factory=list)  # every event that carried content
    text: str = ""
    chunks: int = 0  # content-carrying events
    output_tokens: int = 0  # from usage when the server sent it, else ``chunks``
    prompt_tokens: int | None = None
    usage_from_server: bool = False
    error: str | None = None
    detail: str = ""
    worker: int | None = None  # which load generator sent it (a Locust worker's index); None: this process

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def e2el(self) -> float | None:
        return None if self.end is None else self.end - self.start

    @property
    def itl(self) -> list[float]:
        t = self.chunk_times
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def tpot(self) -> float | None:
        """(E2EL − TTFT) / (output tokens − 1): the mean time per token after the first, as vLLM."""
        if self.e2el is None or self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    def finish(self, t: float) -> None:
        self.end = t
        if not self.usage_from_server:
            self.output_tokens = self.chunks

    def add_content(self, t: float, text: str) -> None:
        if not text:
            return
        if self.first_token is None:
            self.first_token = t
        self.chunk_times.append(t)
        self.chunks += 1
        self.text += text

    def set_usage(self, usage: dict | None) -> None:
        if not usage:
            return
        if usage.get("completion_tokens") is not None:
            self.output_tokens = int(usage["completion_tokens"])
            self.usage_from_server = True
        if usage.get("prompt_tokens") is not None:
            self.prompt_tokens = int(usage["prompt_tokens"])

    def fail(self, kind: str, detail: str = "") -> None:
        if self.error is None:
            self.error, self.detail = kind, detail[:200]

    def row(self) -> dict:
        """A flat dict for CSV: durations instead of raw timestamps, ITL joined."""
        d = asdict(self)
        del d["chunk_times"], d["text"]
        d.update(ttft=self.ttft, tpot=self.tpot, e2el=self.e2el,
                 itl=" ".join(f"{x:.6f}" for x in self.itl))
        return d
