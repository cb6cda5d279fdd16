"""Hostile clients below the app: keys in logs, huge uploads from async clients, oversize websocket frames
and clients that send slowly. Each case was reproduced against ``corolab serve`` before it was fixed.

Servers here run with the uvicorn settings ``corolab serve`` uses (:func:`corolab.serving.server.uvicorn_setup.uvicorn_config`),
or are ``corolab serve`` itself, and take traffic on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import uvicorn
from scripted_engine import ScriptedEngine, running_server, wait_for
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from corolab.teach.background import BackgroundServer
from corolab.serving.config import ServeConfig
from corolab.serving.server.app import create_app

HELLO = {"messages": [{"role": "user", "content": "hello"}]}


@contextlib.asynccontextmanager
async def serving(config: ServeConfig) -> AsyncIterator[tuple[str, int]]:
    """A :class:`ScriptedEngine` app served as ``corolab serve`` serves it, in the test's loop; yields
    (host, port). Logging is left as pytest set it."""
    from corolab.serving.server.uvicorn_setup import uvicorn_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(create_app(ScriptedEngine(), config), config, log_config=None,
                                           log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_for(lambda: server.started or task.done())
        if task.done():
            task.result()
        yield sock.getsockname()
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sent until it closed the connection; fails if it is still open after ``within``."""
    data = b""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


# -- 1. no log line carries a key ----------------------------------------------------------------------

async def test_no_log_line_carries_the_api_key(tmp_path, monkeypatch) -> None:
    secret = "sk-test-SECRET-0123456789abcdef"
    (tmp_path / "key").write_text(secret + "\n")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # the access log goes to stdout: read it while the server runs
    async with BackgroundServer(model="fake", args=["--api-key-file", str(tmp_path / "key"),
                                                    "--log-level", "info"]) as server:
        ws = server.url.replace("http", "ws")
        for path in ("/ws", "/ws/chat"):  # accepted: uvicorn logs the handshake on uvicorn.error
            async with connect(f"{ws}{path}?api_key={secret}") as conn:
                await conn.send(json.dumps({"query": "hi"}))
                await conn.recv()
        for query in (f"api_key={secret}x", f"x=1&API_KEY={secret}"):  # refused (403)
            with pytest.raises(InvalidStatus):
                async with connect(f"{ws}/ws/chat?{query}"):
                    pass
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get(f"/v1/models?api_key={secret}")).status_code == 401
        log = server.log_path
        assert log is not None
        await wait_for(lambda: log.read_text().count("WebSocket /ws") >= 4 and "GET /v1/models" in log.read_text())
        text = log.read_text()
    assert secret not in text and "SECRET" not in text, text
    assert '"WebSocket /ws?api_key=***" [accepted]' in text and "/v1/models?api_key=***" in text


# -- 2. every client reads the 413 ---------------------------------------------------------------------

TEN_MB = b'{"messages": [{"role": "user", "content": "' + b"x" * 10_000_000 + b'"}]}'


async def test_async_clients_read_the_413_in_openais_shape() -> None:
    """They write the whole body before reading: an answer sent while they upload was lost to a TCP reset
    (httpx: ReadError 20 times in 20; openai: APIConnectionError)."""
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(TEN_MB), 65536):
            yield TEN_MB[i:i + 65536]

    async with running_server(create_app(ScriptedEngine(), max_body_bytes=100_000)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            replies = [await http.post("/v1/chat/completions", content=TEN_MB,
                                       headers={"content-type": "application/json"}) for _ in range(3)]
            replies.append(await http.post("/v1/chat/completions", content=chunks(),
                                           headers={"content-type": "application/json"}))
            assert (await http.post("/v1/chat/completions", json=HELLO)).status_code == 200  # and it goes on
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        refusals = []
        for size in (10_000_000, 2_000_000, 1_100_000):
            with pytest.raises(openai.APIStatusError) as refused:
                await client.chat.completions.create(model="scripted-model",
                                                     messages=[{"role": "user", "content": "x" * size}])
            refusals.append(refused.value)
        await client.close()
    for reply in replies:
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large", reply.text
        assert reply.json()["error"]["type"] == "invalid_request_error"
    assert [r.status_code for r in refusals] == [413] * 3 and all(r.code == "request_too_large" for r in refusals)


# -- 4. the frame cap is uvicorn's ---------------------------------------------------------------------

async def test_a_frame_over_the_cap_is_refused_by_the_websocket_protocol() -> None:
    """uvicorn buffered up to 16 MiB before the app's cap looked at a frame (ten 15 MB frames: 96 -> 311 MB);
    now a frame over ``max_body_bytes`` closes the connection with 1009, "message too big"."""
    config = ServeConfig(max_body_bytes=100_000)
    async with serving(config) as (host, port):
        async with connect(f"ws://{host}:{port}/ws/chat", max_size=None) as ws:
            await ws.send(json.dumps({"query": "hi"}))
            while json.loads(await ws.recv())["type"] != "final":
                pass
            await ws.send(json.dumps({"query": "x" * 150_000}))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()  # the app's error frame, before: the whole frame had been buffered
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# -- 7. slow clients are cut off -----------------------------------------------------------------------

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


async def drip(writer: asyncio.StreamWriter, data: bytes) -> None:
    """A slow client: one byte every 50 ms (pacing what it sends, not waiting for the server)."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("kept_alive", [False, True])
async def test_a_client_that_sends_its_headers_slowly_is_cut_off(kept_alive: bool) -> None:
    """200 connections sending a byte every 5 s were all open after 60 s. The deadline covers the headers
    as a whole (bytes that trickle in do not restart it), also for the next request on a kept-alive one."""
    config = ServeConfig(header_timeout=0.5)
    async with serving(config) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        if kept_alive:
            body = json.dumps(HELLO).encode()
            writer.write(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        dripping = asyncio.create_task(drip(writer, HEAD * 20))
        try:
            await closed_by_server(reader, within=config.header_timeout * 20)
        finally:
            dripping.cancel()
            writer.close()


async def test_a_client_that_sends_its_body_slowly_gets_408() -> None:
    config = ServeConfig(body_timeout=0.5)
    async with serving(config) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(HEAD + b"Content-Length: 1000\r\n\r\n")
        dripping = asyncio.create_task(drip(writer, b"x" * 1000))
        try:
            answer = await closed_by_server(reader, within=config.body_timeout * 20)
        finally:
            dripping.cancel()
            writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_timeout" and "0.5 seconds" in error["message"]
