"""The engine's refusals and failures, which the transport turns into OpenAI-shaped errors.

A prompt that does not fit the context window is not among them: that rule belongs to the request's
limits and is refused with :class:`corolab.serving.params.LimitError` (400), wherever it is checked.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class for errors the transport turns into OpenAI-shaped error responses."""


class QueueFullError(EngineError):
    """The bounded waiting queue is full: the transport answers 429 with Retry-After."""

    def __init__(self, message: str = "the server is busy; try again shortly", retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class EngineNotReadyError(EngineError):
    """The model is still loading, or the engine has failed, stopped or is shutting down: 503."""


class ShuttingDownError(EngineNotReadyError):
    """The server is shutting down: a new request is refused (503 with Retry-After), and a reply still running
    at the drain's deadline ends with this error (:mod:`corolab.serving.server.drain`)."""

    def __init__(self, message: str = "the server is shutting down; retry shortly (another server may answer)",
                 retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class RequestFailedError(EngineError):
    """This one request failed (its sampler, its stop strings, a model step): 500 for it alone."""


__all__ = ["EngineError", "EngineNotReadyError", "QueueFullError", "RequestFailedError", "ShuttingDownError"]
