"""``--cors-origin``: which pages elsewhere may call the API from a browser (Starlette's ``CORSMiddleware``).

A browser asks first (a *preflight*: ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-*``) before a
script's ``POST`` with a JSON body or an ``Authorization`` header, and lets the script read an answer only
when it names the page's origin. The server's side of that, on a real uvicorn with a scripted engine: an
allowed origin gets the headers, a refused one and a server without the option get none.
"""

from __future__ import annotations

import httpx
import pytest
from scripted_engine import ScriptedEngine, running_server, wait_healthy

from corolab import cli
from corolab.serving.config import ServeConfig
from corolab.serving.server.cli import config_from
from corolab.serving.server.app import create_app

ALLOWED = "http://localhost:5173"
REFUSED = "https://evil.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
HELLO = {"messages": [{"role": "user", "content": "hello"}]}


async def test_a_preflight_from_an_allowed_origin_is_answered() -> None:
    async with running_server(create_app(ScriptedEngine(), cors_origins=[ALLOWED])) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            answer = await http.options("/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert set(answer.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST"}
    allowed_headers = {h.lower() for h in answer.headers["Access-Control-Allow-Headers"].split(", ")}
    assert {"authorization", "content-type"} <= allowed_headers


async def test_a_preflight_from_another_origin_is_refused() -> None:
    async with running_server(create_app(ScriptedEngine(), cors_origins=[ALLOWED])) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            answer = await http.options("/v1/chat/completions", headers={"Origin": REFUSED, **PREFLIGHT})
            sneaky_header = await http.options("/v1/chat/completions", headers={
                "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-not-allowed"})
    assert answer.status_code == 400 and "origin" in answer.text
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert sneaky_header.status_code == 400 and "headers" in sneaky_header.text


async def test_the_answers_name_the_allowed_origin_only() -> None:
    engine = ScriptedEngine()
    async with running_server(create_app(engine, cors_origins=[ALLOWED])) as base:
        await wait_healthy(base)
        async with httpx.AsyncClient(base_url=base) as http:
            allowed = await http.post("/v1/chat/completions", json=HELLO, headers={"Origin": ALLOWED})
            refused = await http.post("/v1/chat/completions", json=HELLO, headers={"Origin": REFUSED})
            too_big = await http.post("/v1/chat/completions", content=b"x" * (2 << 20),
                                      headers={"Origin": ALLOWED, "Content-Type": "application/json"})
    assert allowed.status_code == 200 and allowed.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert allowed.headers["Access-Control-Expose-Headers"] == "Retry-After"   # a page can read a 429's wait
    # the server answers a refused origin all the same: CORS is the browser's rule, not an access control
    assert refused.status_code == 200 and "Access-Control-Allow-Origin" not in refused.headers
    # the middleware is outermost: even a 413 from the body limit names the origin, so the page can read it
    assert too_big.status_code == 413 and too_big.headers["Access-Control-Allow-Origin"] == ALLOWED


async def test_without_the_option_there_are_no_cors_headers() -> None:
    async with running_server(create_app(ScriptedEngine())) as base:
        await wait_healthy(base)
        async with httpx.AsyncClient(base_url=base) as http:
            preflight = await http.options("/v1/chat/completions", headers={"Origin": ALLOWED, **PREFLIGHT})
            post = await http.post("/v1/chat/completions", json=HELLO, headers={"Origin": ALLOWED})
    assert preflight.status_code == 405          # no route answers OPTIONS: the browser's check fails
    assert post.status_code == 200
    assert not [h for h in (*preflight.headers, *post.headers) if h.lower().startswith("access-control-")]


def test_the_cli_collects_origins_and_refuses_what_is_not_one() -> None:
    parser = cli.build_parser(only="serve")
    args = parser.parse_args(["serve", "--cors-origin", ALLOWED, "--cors-origin", "https://chat.example:8443"])
    assert config_from(args).cors_origins == [ALLOWED, "https://chat.example:8443"]
    assert ServeConfig().cors_origins == [] and config_from(parser.parse_args(["serve"])).cors_origins == []
    for wrong in ("http://localhost:5173/", "localhost:5173", "http://host/path", ""):
        with pytest.raises(ValueError, match="--cors-origin"):
            ServeConfig(cors_origins=[wrong]).validate()
    assert ServeConfig(cors_origins=["*", "http://[::1]:8000"]).validate()
