"""What every route needs, kept on ``app.state``: the engine, its metrics, and the server's settings."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from fastapi import Request, WebSocket

from corolab.engine.base import Engine, SamplingParams
from corolab.protocol import SamplingFields
from corolab.server.errors import APIError
from corolab.server.metrics import Metrics

#: The seed's example request names this model; answering to it keeps that request working unchanged.
SEED_MODEL_ALIAS = "gpt-3.5-turbo"


@dataclass
class ServerState:
    engine: Engine
    metrics: Metrics
    served_names: list[str]
    api_key: str | None = None
    default_max_tokens: int = 256
    load_error: str | None = None
    tasks: set = field(default_factory=set)

    def check_model(self, name: str | None) -> str:
        """The name to echo back; 404 for a model this server does not serve."""
        if name is None or name in self.served_names:
            return name or self.served_names[0]
        raise APIError(404, f"the model '{name}' does not exist; this server serves: {', '.join(self.served_names)}",
                       param="model", code="model_not_found")

    def sampling(self, body: SamplingFields) -> SamplingParams:
        """The engine's view of a request's sampling fields (HTTP body or websocket frame alike)."""
        return SamplingParams(max_tokens=body.token_limit(self.default_max_tokens), temperature=body.temperature,
                              top_p=body.top_p, seed=body.seed, stop=body.stop_list(), ignore_eos=body.ignore_eos)

    def check_key(self, authorization: str | None) -> None:
        if self.api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), self.api_key):
            raise APIError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")


def get_state(request: Request) -> ServerState:
    return request.app.state.corolab


def get_ws_state(websocket: WebSocket) -> ServerState:
    return websocket.app.state.corolab
