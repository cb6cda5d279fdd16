"""The engine contract: what the HTTP/websocket transport may ask of a scheduler.

The transport (``corolab.server``) only ever talks to an :class:`Engine`. Three schedulers implement it
(``naive``, ``threads``, ``batched``) so one load test can compare them with nothing else changed. An
engine owns a model backend (``corolab.backends``) and turns its token ids into text deltas that are safe
to stream: never half a UTF-8 character, never text that a stop sequence later removes.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings. Each request in one batch keeps its own."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep going past end-of-sequence until max_tokens (benchmarks, like vLLM's)


@dataclass(frozen=True)
class Delta:
    """One streamed piece of a reply.

    ``text`` may be empty (for example the final delta that only carries ``finish_reason``).
    Token counts are cumulative for the request so the last delta carries the usage.
    """

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class EngineStats:
    """A snapshot for /metrics and /health."""

    running: int = 0
    waiting: int = 0
    requests_finished: int = 0
    tokens_generated: int = 0


class EngineError(Exception):
    """Base class for errors the transport turns into OpenAI-shaped error responses."""


class QueueFullError(EngineError):
    """The bounded waiting queue is full: the transport answers 429 with Retry-After."""

    def __init__(self, message: str = "the server is busy; try again shortly", retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class PromptTooLongError(EngineError):
    """The prompt (plus max_tokens where required) does not fit the model's context window: 400."""


class EngineNotReadyError(EngineError):
    """The model is still loading: 503."""


StepListener = Callable[[int, float], None]
"""Called after each decode step with (batch size, seconds the step took)."""


@dataclass
class EngineInfo:
    """What the transport shows about the engine and its model."""

    engine: str
    model_id: str
    context_window: int
    backend: str


class Engine(abc.ABC):
    """One scheduler over one model backend.

    Life cycle: ``await start()`` (loads the model off the event loop; ``ready`` turns true), then any
    number of concurrent ``generate`` calls, then ``await stop()``.
    """

    def __init__(self) -> None:
        self.step_listeners: list[StepListener] = []

    @property
    @abc.abstractmethod
    def info(self) -> EngineInfo: ...

    @property
    @abc.abstractmethod
    def ready(self) -> bool: ...

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...

    @abc.abstractmethod
    def generate(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> AsyncIterator[Delta]:
        """Stream the reply to a chat as deltas; the last one has ``finish_reason`` set.

        Raises :class:`QueueFullError`, :class:`PromptTooLongError` or :class:`EngineNotReadyError`
        before the first delta. Closing the iterator early (client gone) frees the request's slot at once.
        """

    def _emit_step(self, batch_size: int, seconds: float) -> None:
        for listener in self.step_listeners:
            listener(batch_size, seconds)


__all__ = [
    "Delta", "Engine", "EngineError", "EngineInfo", "EngineNotReadyError", "EngineStats", "FinishReason",
    "PromptTooLongError", "QueueFullError", "SamplingParams", "StepListener",
]
