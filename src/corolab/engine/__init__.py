"""Schedulers that turn chat requests into streamed deltas: naive | threads | batched."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from corolab.engine.base import (
    Delta, Engine, EngineError, EngineInfo, EngineNotReadyError, EngineStats, PromptTooLongError,
    QueueFullError, SamplingParams,
)

if TYPE_CHECKING:
    from corolab.backends.base import Backend

# kind -> "module:class"; imported on demand so choosing one engine never imports the others
_ENGINES = {
    "naive": "corolab.engine.naive:NaiveEngine",
    "threads": "corolab.engine.threads:ThreadsEngine",
    "batched": "corolab.engine.batched:BatchedEngine",
}
ENGINE_KINDS: tuple[str, ...] = tuple(_ENGINES)


def create_engine(kind: str, backend: Backend, *, max_batch_size: int = 32, max_waiting: int = 256) -> Engine:
    """Build the scheduler ``kind`` over ``backend``; ``await engine.start()`` before generating."""
    if kind not in _ENGINES:
        raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}")
    module_name, class_name = _ENGINES[kind].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(backend, max_batch_size=max_batch_size, max_waiting=max_waiting)


__all__ = [
    "ENGINE_KINDS", "Delta", "Engine", "EngineError", "EngineInfo", "EngineNotReadyError", "EngineStats",
    "PromptTooLongError", "QueueFullError", "SamplingParams", "create_engine",
]
