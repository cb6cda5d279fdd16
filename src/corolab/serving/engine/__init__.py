"""Schedulers that turn chat requests into streamed deltas: naive | threads | batched."""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from corolab.serving.choices import EngineKind, choices
from corolab.serving.config import ServeConfig
from corolab.serving.engine.base import (
    Delta, Engine, EngineError, EngineInfo, EngineNotReadyError, EngineStats, QueueFullError, RequestFailedError,
    ShuttingDownError,
)
from corolab.serving.engine.handle import RequestHandle
from corolab.serving.params import LimitError, SamplingParams

if TYPE_CHECKING:
    from corolab.serving.backends.base import Backend

#: The kinds, in order, from their ``Literal`` type (the CLI's ``--engine`` choices come from the same).
ENGINE_KINDS: tuple[str, ...] = choices(EngineKind)
# kind -> "module:class"; imported on demand so choosing one engine never imports the others
_ENGINES: dict[str, str] = {
    "naive": "corolab.serving.engine.naive:NaiveEngine",
    "threads": "corolab.serving.engine.threads:ThreadsEngine",
    "batched": "corolab.serving.engine.batched:BatchedEngine",
}
assert tuple(_ENGINES) == ENGINE_KINDS, "every EngineKind has its class here, and nothing else"


def create_engine(kind: str | None, backend: Backend, config: ServeConfig | None = None, **overrides: Any) -> Engine:
    """Build the scheduler ``kind`` (``None``: ``config.engine``) over ``backend``, with the settings of
    ``config`` (default: :class:`~corolab.serving.config.ServeConfig`'s) and any field overridden by keyword, e.g.
    ``create_engine("batched", backend, max_batch_size=4)``. ``await engine.start()`` before generating."""
    config = replace(config or ServeConfig(), **overrides)
    kind = kind or config.engine
    if kind not in _ENGINES:
        raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINE_KINDS)}")
    module_name, class_name = _ENGINES[kind].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(backend, replace(config, engine=kind))


__all__ = [
    "ENGINE_KINDS", "Delta", "Engine", "EngineError", "EngineInfo", "EngineNotReadyError", "EngineStats",
    "LimitError", "QueueFullError", "RequestFailedError", "RequestHandle", "SamplingParams", "ShuttingDownError",
    "create_engine",
]
