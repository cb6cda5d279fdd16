"""corolab.teach.served: a real uvicorn server in a thread, reachable while the block runs, gone after it."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from corolab.teach.served import served


def test_serves_then_stops() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    with served(app) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "/ping").json() == {"pong": "yes"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/ping", timeout=2)
