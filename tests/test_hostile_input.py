"""Hostile and unlucky input: each case was reproduced against the server before it was fixed.

One request, frame or setting must never fail, stall or change the result of another; a bad one gets a
clear 4xx (or an error frame, and the connection lives) and the server goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import httpx
import pytest
from scripted_engine import ScriptedEngine, running_server, wait_for, wait_healthy
from websockets.asyncio.client import connect

from corolab.serving.backends.base import Outcome
from corolab.serving.backends.fake import FakeBackend, FakeBatch
from corolab.serving.engine import SamplingParams, create_engine
from corolab.serving.server.app import create_app
from corolab.serving.server.cli import RedactKeys

HELLO = {"messages": [{"role": "user", "content": "hello"}]}


async def post(base: str, body: object, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        if isinstance(body, (str, bytes)):
            return await http.post("/v1/chat/completions", content=body, **kwargs)  # type: ignore[arg-type]
        return await http.post("/v1/chat/completions", json=body, **kwargs)  # type: ignore[arg-type]


def error_of(reply: httpx.Response, status: int) -> dict:
    assert reply.status_code == status, reply.text
    return reply.json()["error"]


# -- the protocol refuses what no model can run -------------------------------------------------------

@pytest.mark.parametrize("fields, param", [
    ({"seed": 2**64}, "seed"),               # torch's generators take 64-bit seeds: was a 500 for a whole step
    ({"seed": -1}, "seed"),
    ({"max_tokens": 2**63}, "max_tokens"),   # was a 500
    ({"stream": "yes"}, "stream"),            # no coercion from strings, as OpenAI answers
    ({"max_tokens": "5"}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
async def test_out_of_range_or_mistyped_fields_are_400(fields: dict, param: str) -> None:
    engine = ScriptedEngine()
    async with running_server(create_app(engine)) as base:
        error = error_of(await post(base, {**HELLO, **fields}), 400)
    assert error["param"].startswith(param) and error["type"] == "invalid_request_error"
    assert engine.calls == []


@pytest.mark.parametrize("fields, param, says", [
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences"),  # was stop.function-after[...]
    ({"messages": [{"role": "user", "content": 123}]}, "messages.0.content", "a string, or a list of text parts"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages.0.content.0.type", "only text parts"),
    ({"stop": ["a", 1]}, "stop.1", "must be a string"),
    ({"messages": []}, "messages", "at least one message"),
])
async def test_a_400_names_the_field_and_says_what_it_allows(fields: dict, param: str, says: str) -> None:
    async with running_server(create_app(ScriptedEngine())) as base:
        error = error_of(await post(base, {**HELLO, **fields}), 400)
    assert error["param"] == param and error["message"].startswith(f"{param}: ") and says in error["message"]
    assert "function-after" not in error["message"] and "list[" not in error["message"]


def test_a_websocket_error_frame_says_the_same() -> None:
    from corolab.serving.protocol import WsRequest
    from corolab.serving.server.websocket import parse_frame

    message = parse_frame(json.dumps({"query": "q", "stop": list("abcde")}), WsRequest, 1 << 20)
    assert message == "stop: at most 4 stop sequences are allowed (got 5)"


async def test_integral_floats_are_json_integers_and_fractions_are_400() -> None:
    engine = ScriptedEngine()
    async with running_server(create_app(engine)) as base:
        accepted = await post(base, {**HELLO, "n": 1.0, "max_tokens": 5.0, "seed": 7.0})
        halves = [error_of(await post(base, {**HELLO, name: 1.5}), 400) for name in ("n", "max_tokens", "seed")]
        flag = error_of(await post(base, {**HELLO, "max_tokens": True}), 400)  # a boolean is no integer
    assert accepted.status_code == 200, accepted.text
    assert (engine.calls[0].params.max_tokens, engine.calls[0].params.seed) == (5, 7)
    assert [h["param"] for h in halves] == ["n", "max_tokens", "seed"] and flag["param"] == "max_tokens"
    assert all("integer" in h["message"] for h in halves)


async def test_a_lone_surrogate_is_400_not_500() -> None:
    body = '{"messages": [{"role": "user", "content": "x\\ud800"}]}'  # valid JSON, invalid Unicode
    async with running_server(create_app(ScriptedEngine())) as base:
        error = error_of(await post(base, body, headers={"content-type": "application/json"}), 400)
    assert "surrogate" in error["message"]


async def test_a_non_ascii_bearer_token_is_401_with_www_authenticate() -> None:
    async with running_server(create_app(ScriptedEngine(), api_key="sekret")) as base:
        reply = await post(base, HELLO, headers={"Authorization": "Bearer sékret".encode("latin-1")})
        missing = await post(base, HELLO)
    for r in (reply, missing):
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


async def test_a_huge_body_is_413_and_an_overlong_prompt_400_before_tokenizing() -> None:
    engine = ScriptedEngine()
    app = create_app(engine, max_body_bytes=150_000)
    tokenized = []
    original = engine.tokenize

    async def counting(messages):  # type: ignore[no-untyped-def]
        tokenized.append(sum(len(m["content"]) for m in messages))
        return await original(messages)

    engine.tokenize = counting  # type: ignore[method-assign]
    async with running_server(app) as base:
        huge = {"messages": [{"role": "user", "content": "x" * 200_000}]}
        assert error_of(await post(base, huge), 413)["code"] == "request_too_large"

        async def chunks():  # no Content-Length: counted as it arrives
            yield json.dumps(huge).encode()

        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            chunked = await http.post("/v1/chat/completions", content=chunks(),
                                      headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        # under the body cap, but far more characters than the context window (4096 tokens) can hold
        long = {"messages": [{"role": "user", "content": "x" * 140_000}]}
        assert error_of(await post(base, long), 400)["code"] == "context_length_exceeded"
        assert (await post(base, HELLO)).status_code == 200  # and the server goes on
    assert max(tokenized) == len("hello")  # only the good request was ever tokenized (and start-up's probe)


@pytest.mark.parametrize("count", [31_000, 1_000])
async def test_many_empty_messages_are_400_before_tokenizing(count: int) -> None:
    """31,000 empty messages are 1 MB, under the body cap, with no characters to count: the real model's
    template made 165,025 tokens of them, 0.5 s of tokenizing each. 1,000 are fewer messages than the
    context window has tokens, but the fake template's 9 tokens per message make 9,000."""
    backend = FakeBackend()
    seen: list[int] = []
    encode = backend.encode_chat

    def recording(messages):  # type: ignore[no-untyped-def]
        seen.append(len(messages))
        return encode(messages)

    backend.encode_chat = recording  # type: ignore[method-assign]
    app = create_app(create_engine("batched", backend))
    async with running_server(app) as base:
        await wait_healthy(base)
        if count < 4096:  # fewer messages than the window has tokens: the template's cost must count
            await wait_for(lambda: app.state.corolab.message_tokens > 1)  # start-up measured it
        empty = {"messages": [{"role": "user", "content": ""}] * count}
        error = error_of(await post(base, empty), 400)
        assert (await post(base, HELLO)).status_code == 200
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert seen[-1] == 1 and max(seen) <= 3  # only start-up's probe (1 and 3 messages) and the good request


async def test_retry_after_is_the_time_the_queue_needs_to_drain() -> None:
    engine = create_engine("batched", FakeBackend(step_delay=0.05), max_batch_size=1, max_waiting=2)
    long = {**HELLO, "max_tokens": 30, "ignore_eos": True}
    async with running_server(create_app(engine)) as base:
        await wait_healthy(base)
        assert (await post(base, long)).status_code == 200  # the server has seen steps and a reply's length
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            ahead = [asyncio.create_task(http.post("/v1/chat/completions", json=long)) for _ in range(3)]
            await wait_for(lambda: engine.stats().waiting == 2)  # one decodes, two wait
            refused = await http.post("/v1/chat/completions", json=long)
            for task in ahead:
                task.cancel()
            await asyncio.gather(*ahead, return_exceptions=True)
    assert error_of(refused, 429)["code"] == "queue_full"
    # two queued replies of 30 steps, at least 50 ms each, one row at a time: at least 3 s (it said 1)
    assert 3 <= int(refused.headers["retry-after"]) <= 120


async def test_tokenizing_runs_off_the_event_loop() -> None:
    backend = FakeBackend()
    seen: list[str] = []
    encode = backend.encode_chat

    def recording(messages):  # type: ignore[no-untyped-def]
        seen.append(threading.current_thread().name)
        return encode(messages)

    backend.encode_chat = recording  # type: ignore[method-assign]
    engine = create_engine("batched", backend)
    await engine.start()
    try:
        text = "".join([d.text async for d in engine.generate([{"role": "user", "content": "hi"}], SamplingParams())])
    finally:
        await engine.stop()
    assert text == "You said: hi"
    assert seen and all(name.startswith("corolab-tokenize") for name in seen)


# -- one bad row fails alone ----------------------------------------------------------------------------

class OneBadRow(FakeBatch):
    """A batch whose prefill fails the row with seed 1013 only, as a sampler refusing its seed would."""

    def add_many(self, items):  # type: ignore[no-untyped-def]
        outcomes: dict[int, Outcome] = {}
        good = []
        for key, prompt, params in items:
            if params.seed == 1013:
                outcomes[key] = ValueError("this row's sampler refused its seed")
            else:
                good.append((key, prompt, params))
        outcomes.update(super().add_many(good))
        return outcomes


class OneBadRowBackend(FakeBackend):
    def new_batch(self):  # type: ignore[no-untyped-def]
        return OneBadRow(self)


async def test_one_rows_failure_fails_that_request_only() -> None:
    engine = create_engine("batched", OneBadRowBackend(step_delay=0.01), max_batch_size=32)
    async with running_server(create_app(engine)) as base:
        await wait_healthy(base)
        bodies = [{**HELLO, "temperature": 0.5, "seed": 1013 if i == 7 else i} for i in range(21)]
        replies = await asyncio.gather(*(post(base, b) for b in bodies))
    statuses = [r.status_code for r in replies]
    assert statuses[7] == 500 and statuses.count(200) == 20
    assert "sampler" not in replies[7].text  # the cause goes to the log, not to the client


# -- the fake backend's own limits ---------------------------------------------------------------------

def test_fake_ignore_eos_with_a_huge_token_limit_allocates_nothing_big() -> None:
    batch = FakeBackend().new_batch()
    first = batch.add(1, list(b"<user>hi\n<assistant>"), SamplingParams(max_tokens=10**9, ignore_eos=True))
    reply, repeat, _ = batch._rows[1]  # type: ignore[attr-defined]
    assert repeat and len(reply) < 100 and first == reply[0]
    tokens = [batch.step()[1] for _ in range(3 * len(reply))]
    assert tokens[: len(reply) - 1] == reply[1:] and 256 not in tokens  # it goes round, never ending


# -- websockets: bad frames get an error frame, the connection lives -----------------------------------

@pytest.mark.parametrize("path", ["/ws/chat", "/ws"])
@pytest.mark.parametrize("frame, fragment", [
    ('{"messages": []}', "messages"),
    ("[" * 1000 + "]" * 1000, "nested too deeply"),
    ('{"query": ' + "[" * 1000 + "]" * 1000 + "}", ""),
    ('{"query": "x\\ud800"}', "surrogate"),
    ('{"query": "q", "seed": 18446744073709551616}', "seed"),
])
async def test_a_bad_frame_gets_an_error_frame_and_the_connection_lives(path: str, frame: str, fragment: str) -> None:
    if path == "/ws" and frame.startswith('{"messages"'):
        frame = '{"history": []}'  # ChatGLM's protocol has no messages: its missing query is the bad case
        fragment = "query"
    async with running_server(create_app(ScriptedEngine())) as base:
        async with connect(base.replace("http", "ws") + path) as ws:
            await ws.send(frame)
            error = json.loads(await ws.recv())
            assert error["error"]["type"] == "invalid_request_error" and fragment in error["error"]["message"]
            if path == "/ws":
                assert error["status"] == 400
            await ws.send(json.dumps({"query": "still there?"}))
            frames = [json.loads(await ws.recv())]
            while frames[-1].get("type") not in ("final", "error") and frames[-1].get("status") != 200:
                frames.append(json.loads(await ws.recv()))
            assert "error" not in frames[-1]


# -- secrets stay out of logs and ps --------------------------------------------------------------------

def test_the_access_log_redacts_api_keys() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/ws/chat?api_key=sekret&x=1", "1.1", 101), None)
    RedactKeys().filter(record)
    assert "sekret" not in record.getMessage() and "api_key=***&x=1" in record.getMessage()


def test_the_api_key_can_come_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:
    from corolab.serving.config import read_api_key

    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("COROLAB_API_KEY", "from-env")
    assert read_api_key(None, str(key_file)) == "from-file"
    assert read_api_key(None, None) == "from-env"
    assert read_api_key("given", None) == "given"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_api_key(None, str(tmp_path / "empty"))


# -- a dead worker says so ------------------------------------------------------------------------------

class DyingBatch(FakeBatch):
    def step(self):  # type: ignore[no-untyped-def]
        raise SystemExit("the worker thread is going down")  # not an Exception: the worker loop cannot catch it


class DyingBackend(FakeBackend):
    def new_batch(self):  # type: ignore[no-untyped-def]
        return DyingBatch(self)


async def test_when_the_worker_dies_health_says_failed_and_the_log_has_the_traceback(caplog) -> None:
    engine = create_engine("batched", DyingBackend())
    caplog.set_level(logging.ERROR, logger="corolab.serving.engine")
    async with running_server(create_app(engine)) as base:
        await wait_healthy(base)
        reply = await post(base, HELLO)
        assert reply.status_code in (500, 503)
        async with httpx.AsyncClient(base_url=base) as http:
            await wait_for(lambda: engine.failure is not None)
            health = await http.get("/health")
            after = await post(base, HELLO)
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "SystemExit" in health.json()["detail"]
    assert after.status_code == 503
    assert any(r.exc_info and "going down" in str(r.exc_info[1]) for r in caplog.records)


# -- the OpenAPI document says what the server does ----------------------------------------------------

async def test_openapi_documents_400_errors_text_metrics_and_the_stop_limit() -> None:
    async with running_server(create_app(ScriptedEngine())) as base, httpx.AsyncClient(base_url=base) as http:
        doc = (await http.get("/openapi.json")).json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat and "400" in chat and "429" in chat
    assert chat["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "HTTPValidationError" not in json.dumps(doc)
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=0.0.4; charset=utf-8"]
    request = doc["components"]["schemas"]["ChatCompletionRequest"]
    stop_list = [s for s in request["properties"]["stop"]["anyOf"] if s.get("type") == "array"][0]
    assert stop_list["maxItems"] == 4
    assert request["properties"]["seed"]["anyOf"][0]["maximum"] == float(2**64 - 1)


async def test_the_last_stream_chunk_has_an_empty_delta() -> None:
    async with running_server(create_app(ScriptedEngine())) as base, httpx.AsyncClient(base_url=base) as http:
        raw = (await http.post("/v1/chat/completions", json={**HELLO, "stream": True})).text
    chunks = [json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")]
    last = [c for c in chunks if c["choices"]][-1]
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"


# -- a client that leaves while queued never reaches the model -----------------------------------------

class GatedBatch(FakeBatch):
    """Every step waits for the test's permission, so a test decides when the running request moves on."""

    def step(self):  # type: ignore[no-untyped-def]
        self._backend.gate.wait(10)  # type: ignore[attr-defined]
        return super().step()


class GatedBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def new_batch(self):  # type: ignore[no-untyped-def]
        return GatedBatch(self)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_hangs_up_while_queued_never_reaches_prefill(stream: bool) -> None:
    backend = GatedBackend()
    engine = create_engine("batched", backend, max_batch_size=1)
    async with running_server(create_app(engine)) as base:
        await wait_healthy(base)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            first = asyncio.create_task(http.post("/v1/chat/completions", json={**HELLO, "max_tokens": 3}))
            await wait_for(lambda: len(backend.prefilled) == 1)        # the first holds the only slot
            queued = asyncio.create_task(http.post("/v1/chat/completions",
                                                   json={**HELLO, "stream": stream, "max_tokens": 3}))
            await wait_for(lambda: engine.stats().waiting == 1)        # the second waits in the queue
            queued.cancel()                                            # its client hangs up
            with pytest.raises(asyncio.CancelledError):
                await queued
            await wait_for(lambda: engine.stats().waiting == 0)        # withdrawn, before any slot freed
            backend.gate.set()
            assert (await first).status_code == 200
        assert list(backend.prefilled) == [1]                           # the second was never prefilled
