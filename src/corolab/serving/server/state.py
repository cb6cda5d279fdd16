"""What every route needs, kept on ``app.state``: the engine, the settings, the metrics, the drain, and the
two checks every request passes (which model it names, which key it carries)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from fastapi import Request, WebSocket

from corolab.serving.config import ServeConfig
from corolab.serving.engine.base import Engine
from corolab.serving.server.drain import Drain
from corolab.serving.server.errors import APIError
from corolab.serving.server.metrics import Metrics

#: ChatGLM's example request names this model; answering to it keeps that request working unchanged.
SEED_MODEL_ALIAS = "gpt-3.5-turbo"


@dataclass
class ServerState:
    engine: Engine
    config: ServeConfig
    metrics: Metrics
    served_names: list[str]
    drain: Drain  # the replies and websockets still open, and the shutdown's drain (server.drain)
    load_error: str | None = None
    message_tokens: int = 1  # the chat template's tokens per message (admission.message_tokens, at start-up)
    tasks: set = field(default_factory=set)

    def check_model(self, name: str | None) -> str:
        """The name to echo back; 404 for a model this server does not serve."""
        if name is None or name in self.served_names:
            return name or self.served_names[0]
        raise APIError(404, f"the model '{name}' does not exist; this server serves: {', '.join(self.served_names)}",
                       param="model", code="model_not_found")

    def check_key(self, authorization: str | None) -> None:
        """401 unless the request carries ``Bearer <the key>``. Compared as bytes in constant time: a header
        may hold any Latin-1 text, which ``hmac.compare_digest`` refuses to compare as ``str``."""
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, key.encode("utf-8")):
            raise APIError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def get_state(request: Request) -> ServerState:
    return request.app.state.corolab


def get_ws_state(websocket: WebSocket) -> ServerState:
    return websocket.app.state.corolab
