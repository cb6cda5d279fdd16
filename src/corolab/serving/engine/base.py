"""The engine contract: what the HTTP/websocket transport may ask of a scheduler.

The transport (``corolab.serving.server``) only ever talks to an :class:`Engine`, in two steps:

1. **Admission.** ``prompt = await engine.tokenize(messages)`` (off the event loop), then
   ``handle = engine.submit(prompt, params)``, which refuses at once (:class:`QueueFullError` → 429,
   :class:`~corolab.serving.params.LimitError` → 400, :class:`EngineNotReadyError` and
   :class:`ShuttingDownError` → 503) or returns a
   :class:`~corolab.serving.engine.handle.RequestHandle`.
2. **Streaming.** ``async for delta in handle``; ``handle.cancel()`` withdraws the request at any point
   (queued or generating) and frees its slot at once.

Three schedulers implement it (``naive``, ``threads``, ``batched``) so one load test can compare them with
nothing else changed. An engine owns a model backend (``corolab.serving.backends``) and turns its token ids into
text deltas that are safe to stream: never half a UTF-8 character, never text a stop sequence later removes.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from corolab.serving.engine.delta import Delta
from corolab.serving.engine.errors import (
    EngineError, EngineNotReadyError, QueueFullError, RequestFailedError, ShuttingDownError,
)
from corolab.serving.engine.handle import RequestHandle
from corolab.serving.params import FinishReason, LimitError, SamplingParams, reply_limit


@dataclass
class EngineStats:
    """A snapshot for /metrics and /health."""

    running: int = 0
    waiting: int = 0
    requests_finished: int = 0
    tokens_generated: int = 0
    prefix_hits: int = 0


StepListener = Callable[[int, float], None]
"""Called on the event loop after each decode step with (batch size, seconds the step took)."""


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
    number of concurrent requests, then ``await stop()``. ``failure`` says why an engine that started
    can no longer serve (its worker died), so ``/health`` can say so instead of "loading" forever.
    A server shutting down calls :meth:`stop_admitting` first: new requests are refused, running ones go on.
    """

    #: Set by :meth:`stop_admitting`: the Retry-After of every refusal from then on.
    _closed_retry_after: float | None = None

    def __init__(self) -> None:
        self.step_listeners: list[StepListener] = []

    @property
    @abc.abstractmethod
    def info(self) -> EngineInfo: ...

    @property
    @abc.abstractmethod
    def ready(self) -> bool: ...

    @property
    def failure(self) -> str | None:
        return None

    def check_ready(self) -> None:
        """Raise :class:`EngineNotReadyError` unless the engine can take a request now. The reason stays
        general: the failure's text is for ``/health`` and the log, not for every client."""
        if self.failure is not None:
            raise EngineNotReadyError("the engine has failed; see /health and the server log")
        if self._closed_retry_after is not None:
            raise ShuttingDownError(retry_after=self._closed_retry_after)
        if not self.ready:
            raise EngineNotReadyError("the model is still loading; try again shortly")

    @property
    def admitting(self) -> bool:
        """False once :meth:`stop_admitting` was called."""
        return self._closed_retry_after is None

    def stop_admitting(self, retry_after: float) -> None:
        """Refuse every new request from now on with :class:`ShuttingDownError` (503, ``Retry-After``
        ``retry_after`` seconds); requests already admitted go on. The first step of a graceful shutdown."""
        self._closed_retry_after = retry_after

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...

    @abc.abstractmethod
    async def tokenize(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Apply the chat template and tokenize, off the event loop."""

    @abc.abstractmethod
    def submit(self, prompt: list[int], params: SamplingParams) -> RequestHandle:
        """Admit a tokenized request or refuse it at once; never waits for the model."""

    async def generate(self, messages: Sequence[dict[str, str]], params: SamplingParams) -> AsyncIterator[Delta]:
        """Tokenize, submit and stream in one call: the short form for notebooks and tests.

        ``params.max_tokens`` is clamped to the context window left after the prompt. Closing the iterator
        early withdraws the request.
        """
        prompt = await self.tokenize(messages)
        limit = reply_limit(len(prompt), self.info.context_window, max_tokens=params.max_tokens,
                            default=params.max_tokens)
        if limit != params.max_tokens:
            params = replace(params, max_tokens=limit)
        handle = self.submit(prompt, params)
        try:
            async for delta in handle:
                yield delta
        finally:
            handle.cancel()

    def _emit_step(self, batch_size: int, seconds: float) -> None:
        for listener in self.step_listeners:
            listener(batch_size, seconds)


__all__ = [
    "Delta", "Engine", "EngineError", "EngineInfo", "EngineNotReadyError", "EngineStats", "FinishReason",
    "LimitError", "QueueFullError", "RequestFailedError", "SamplingParams", "ShuttingDownError", "StepListener",
]
