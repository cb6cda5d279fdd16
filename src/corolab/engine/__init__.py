"""Schedulers that turn chat requests into streamed deltas: naive | threads | batched."""

from corolab.engine.base import (
    Delta, Engine, EngineError, EngineInfo, EngineNotReadyError, EngineStats, PromptTooLongError,
    QueueFullError, SamplingParams,
)

__all__ = [
    "Delta", "Engine", "EngineError", "EngineInfo", "EngineNotReadyError", "EngineStats",
    "PromptTooLongError", "QueueFullError", "SamplingParams",
]
