"""The FastAPI application: wiring only. Routes, errors, metrics, limits and the websockets live in their
modules; the settings come from one :class:`~corolab.serving.config.ServeConfig`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from corolab.serving.config import ServeConfig
from corolab.serving.engine.base import Engine
from corolab.serving.server import errors, page, routes, websocket
from corolab.serving.server.admission import message_tokens
from corolab.serving.server.drain import Drain
from corolab.serving.server.limits import BodyLimit
from corolab.serving.server.metrics import Metrics, StatusCounter
from corolab.serving.server.state import SEED_MODEL_ALIAS, ServerState

log = logging.getLogger("corolab.serving.server")


def free_cuda_cache() -> None:
    """What ChatGLM2-6B's ``openai_api.py`` does when its app shuts down: hand cached CUDA memory back to the
    driver. Only if torch is already imported and CUDA was used: a fake model never loads torch for this."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


def create_app(engine: Engine, config: ServeConfig | None = None, *,
               on_load_failure: Callable[[BaseException], None] | None = None, **overrides: Any) -> FastAPI:
    """An OpenAI-compatible app around ``engine``, with the settings of ``config`` (default: the engine's,
    else :class:`ServeConfig`'s) and any field overridden by keyword, e.g. ``create_app(engine, api_key=...)``.

    The model loads in the background after start-up, so the server answers at once: ``/health`` says 503
    until the engine is ready, then 200, and 503 again while it drains (:mod:`corolab.serving.server.drain`).
    Served names default to the model id plus ``gpt-3.5-turbo``, so ChatGLM's example request works unchanged.
    """
    config = replace(config or getattr(engine, "config", None) or ServeConfig(), **overrides).validate()
    names = config.served_model_names or [engine.info.model_id, SEED_MODEL_ALIAS]
    state = ServerState(engine=engine, config=config, metrics=Metrics(engine), served_names=list(names),
                        drain=Drain(engine, config.drain_timeout))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                await engine.start()
                state.message_tokens = await message_tokens(engine)
                log.info("model %s ready (engine %s)", engine.info.model_id, engine.info.engine)
            except Exception as exc:
                state.load_error = f"{type(exc).__name__}: {exc}"
                log.error("the model failed to load: %s", state.load_error, exc_info=exc)
                if on_load_failure is not None:
                    on_load_failure(exc)

        task = asyncio.create_task(load())
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)
        try:
            yield
        finally:  # uvicorn's shutdown has run: after a signal, the drain before it ended every reply
            if not task.done():
                task.cancel()
            await engine.stop()
            free_cuda_cache()

    app = FastAPI(title="corolab", summary="An OpenAI-compatible chat server with continuous batching",
                  lifespan=lifespan)
    app.state.corolab = state
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, body_timeout=config.body_timeout)
    app.add_middleware(StatusCounter, metrics=state.metrics)
    if config.cors_origins:  # added last, so outermost: a 413 or a 401 carries the headers too, and a page can read it
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"])
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(websocket.router)
    app.include_router(page.router)
    return app
