"""The FastAPI application: wiring only. Routes, errors, metrics and the websocket live in their modules."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from corolab.engine.base import Engine
from corolab.server import errors, routes, websocket
from corolab.server.metrics import Metrics, StatusCounter
from corolab.server.state import SEED_MODEL_ALIAS, ServerState

log = logging.getLogger("corolab.server")


def create_app(engine: Engine, *, api_key: str | None = None, served_model_name: str | list[str] | None = None,
               default_max_tokens: int = 256, on_load_failure: Callable[[BaseException], None] | None = None) -> FastAPI:
    """An OpenAI-compatible app around ``engine``.

    The model loads in the background after start-up, so the server answers at once: ``/health`` says 503
    until the engine is ready, then 200. Served names default to the model id plus the seed's
    ``gpt-3.5-turbo``, so the seed's request works unchanged.
    """
    if served_model_name is None:
        names = [engine.info.model_id, SEED_MODEL_ALIAS]
    else:
        names = [served_model_name] if isinstance(served_model_name, str) else list(served_model_name)
    state = ServerState(engine=engine, metrics=Metrics(engine), served_names=names, api_key=api_key,
                        default_max_tokens=default_max_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                await engine.start()
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
        finally:
            if not task.done():
                task.cancel()
            await engine.stop()

    app = FastAPI(title="corolab", summary="An OpenAI-compatible chat server with continuous batching",
                  lifespan=lifespan)
    app.state.corolab = state
    app.add_middleware(StatusCounter, metrics=state.metrics)
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(websocket.router)
    return app
