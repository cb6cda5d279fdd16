"""The HTTP side of ``create_app``: errors in OpenAI's shape, SSE framing, disconnects, health, metrics.

Everything runs on a real uvicorn server on 127.0.0.1 with a :class:`ScriptedEngine`, so each test
controls exactly what the engine does (refuse, hold a reply open, fail) and can read what it was asked.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from scripted_engine import ScriptedEngine, running_server, wait_for, wait_healthy

from corolab.serving.engine.base import EngineError, EngineNotReadyError, QueueFullError
from corolab.serving.params import LimitError
from corolab.serving.server.app import create_app

HELLO = {"model": "scripted-model", "messages": [{"role": "user", "content": "hello"}]}


async def post(base: str, body: object, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        if isinstance(body, (str, bytes)):
            return await http.post("/v1/chat/completions", content=body, **kwargs)  # type: ignore[arg-type]
        return await http.post("/v1/chat/completions", json=body, **kwargs)  # type: ignore[arg-type]


def assert_openai_error(response: httpx.Response, status: int, error_type: str, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type
    if code is not None:
        assert body["error"]["code"] == code
    message = body["error"]["message"]
    assert message and "Traceback" not in message and "/src/" not in message and ".py" not in message
    return body["error"]


async def events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking the framing on the way."""
    raw = (await response.aread()).decode()
    assert raw.endswith("\n\n")
    blocks = raw.split("\n\n")[:-1]
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks)
    return [block[len("data: "):] for block in blocks]


# -- plain and streamed replies ----------------------------------------------------------------------------

async def test_plain_reply_and_sampling_fields_reach_the_engine() -> None:
    engine = ScriptedEngine()
    async with running_server(create_app(engine)) as base:
        reply = await post(base, {**HELLO, "max_length": 42, "temperature": 0.3, "top_p": 0.8, "seed": 7,
                                  "stop": "\n\n", "user": "u1", "frequency_penalty": 0.2, "ignore_eos": True})
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "scripted-model"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "echo: hello"},
                                "finish_reason": "stop", "logprobs": None}]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["completion_tokens"] == 3
    params = engine.calls[0].params
    # max_length counts prompt plus reply (as ChatGLM and Hugging Face do): 42 minus the 5-token prompt
    assert (params.max_tokens, params.temperature, params.top_p, params.seed, params.stop) == (37, 0.3, 0.8, 7, ("\n\n",))
    assert params.ignore_eos


async def test_sse_framing_role_content_finish_done() -> None:
    engine = ScriptedEngine(pieces=3)
    async with running_server(create_app(engine)) as base:
        reply = await post(base, {**HELLO, "stream": True})
        assert reply.headers["content-type"].startswith("text/event-stream")
        payloads = await events(reply)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "echo: hello"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]


async def test_include_usage_adds_one_final_usage_chunk() -> None:
    async with running_server(create_app(ScriptedEngine())) as base:
        reply = await post(base, {**HELLO, "stream": True, "stream_options": {"include_usage": True}})
        payloads = await events(reply)
    usage_chunk = json.loads(payloads[-2])
    assert payloads[-1] == "[DONE]" and usage_chunk["choices"] == []
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 3
    assert all(json.loads(p)["usage"] is None for p in payloads[:-2])


async def test_streams_from_several_clients_overlap() -> None:
    engine = ScriptedEngine(gate=asyncio.Event())
    async with running_server(create_app(engine)) as base:
        replies = [asyncio.create_task(post(base, {**HELLO, "stream": True,
                                                   "messages": [{"role": "user", "content": f"q{i}"}]}))
                   for i in range(3)]
        await wait_for(lambda: sum(e == "first" for e, _ in engine.log) == 3)
        assert not any(e == "end" for e, _ in engine.log)
        engine.gate.set()  # type: ignore[union-attr]
        bodies = [await events(r) for r in await asyncio.gather(*replies)]
    texts = ["".join(json.loads(p)["choices"][0]["delta"].get("content") or "" for p in b[:-1]) for b in bodies]
    assert texts == ["echo: q0", "echo: q1", "echo: q2"]


async def test_client_disconnect_closes_the_engine_iterator_at_once() -> None:
    """The engine is held silent after the first delta: only the server noticing the disconnect can close it."""
    engine = ScriptedEngine(gate=asyncio.Event())
    async with running_server(create_app(engine)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            async with http.stream("POST", "/v1/chat/completions", json={**HELLO, "stream": True}) as reply:
                async for line in reply.aiter_lines():
                    if '"content": "ech' in line or '"content":"ech' in line:
                        break
        await wait_for(lambda: bool(engine.calls) and engine.calls[0].closed_early)
        assert engine.stats().running == 0
        assert engine.log == [("start", 1), ("first", 1), ("closed", 1)]


async def test_a_stream_the_client_left_counts_as_499_not_200() -> None:
    engine = ScriptedEngine(gate=asyncio.Event())
    app = create_app(engine)
    metrics = app.state.corolab.metrics

    def count(status: str) -> float:
        return metrics.sample("corolab_http_requests_total", endpoint="chat", status=status)

    async with running_server(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            async with http.stream("POST", "/v1/chat/completions", json={**HELLO, "stream": True}) as reply:
                assert reply.status_code == 200
                async for line in reply.aiter_lines():
                    if "ech" in line:
                        break                     # the client hangs up while the reply is held open
            await wait_for(lambda: count("499") == 1)
            engine.gate.set()  # type: ignore[union-attr]
            whole = await post(base, {**HELLO, "stream": True})  # a stream read to its end stays a 200
            assert whole.text.rstrip().endswith("data: [DONE]")
        await wait_for(lambda: count("200") == 1)
    assert count("499") == 1 and count("200") == 1


async def test_failure_mid_stream_ends_with_an_error_event_then_done() -> None:
    engine = ScriptedEngine(fail_midway=EngineError("kaboom at /srv/secret.py"))
    async with running_server(create_app(engine)) as base:
        payloads = await events(await post(base, {**HELLO, "stream": True}))
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["type"] == "server_error" and "/srv" not in error["message"]


# -- errors --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, param", [
    ("{not json", None),
    ({"model": "scripted-model"}, "messages"),
    ({**HELLO, "n": 2}, "n"),
    ({**HELLO, "temperature": 7}, "temperature"),
    ({**HELLO, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
])
async def test_invalid_body_is_400_not_422(body: object, param: str | None) -> None:
    engine = ScriptedEngine()
    async with running_server(create_app(engine)) as base:
        reply = await post(base, body, headers={"Content-Type": "application/json"})
    error = assert_openai_error(reply, 400, "invalid_request_error")
    if param is not None:
        assert error["param"] == param
    assert engine.calls == []


async def test_unknown_model_is_404_and_served_names_are_listed() -> None:
    async with running_server(create_app(ScriptedEngine(), served_model_names=["tiny"])) as base:
        reply = await post(base, {**HELLO, "model": "gpt-9"})
        async with httpx.AsyncClient(base_url=base) as http:
            models = (await http.get("/v1/models")).json()
            unknown_route = await http.get("/v2/nothing")
            wrong_method = await http.get("/v1/chat/completions")
    assert assert_openai_error(reply, 404, "not_found_error", "model_not_found")["param"] == "model"
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert_openai_error(unknown_route, 404, "not_found_error")
    assert_openai_error(wrong_method, 405, "invalid_request_error")


@pytest.mark.parametrize("refusal, status, error_type, code", [
    (LimitError("the prompt has 5000 tokens; the context window is 2048"), 400, "invalid_request_error",
     "context_length_exceeded"),
    (QueueFullError(retry_after=2.6), 429, "rate_limit_error", "queue_full"),
    (EngineNotReadyError("the model is still loading"), 503, "service_unavailable", None),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_engine_refusals_map_to_statuses(refusal: Exception, status: int, error_type: str,
                                               code: str | None, stream: bool) -> None:
    engine = ScriptedEngine(refuse=refusal)  # type: ignore[arg-type]
    async with running_server(create_app(engine)) as base:
        reply = await post(base, {**HELLO, "stream": stream})
    assert_openai_error(reply, status, error_type, code)
    if status == 429:
        assert reply.headers["Retry-After"] == "3"  # whole seconds, rounded


async def test_unexpected_engine_failure_is_500_without_internals() -> None:
    class Broken(ScriptedEngine):
        def submit(self, prompt, params):  # type: ignore[no-untyped-def, override]
            raise RuntimeError("secret at /home/me/model.py line 3")

    async with running_server(create_app(Broken())) as base:
        reply = await post(base, HELLO)
    error = assert_openai_error(reply, 500, "server_error")
    assert "secret" not in error["message"]


async def test_api_key_is_required_when_set() -> None:
    async with running_server(create_app(ScriptedEngine(), api_key="sekret")) as base:
        missing = await post(base, HELLO)
        wrong = await post(base, HELLO, headers={"Authorization": "Bearer nope"})
        basic = await post(base, HELLO, headers={"Authorization": "Basic sekret"})
        right = await post(base, HELLO, headers={"Authorization": "Bearer sekret"})
        async with httpx.AsyncClient(base_url=base) as http:
            models = await http.get("/v1/models")
            health = await http.get("/health")
    for reply in (missing, wrong, basic, models):
        assert_openai_error(reply, 401, "authentication_error")
    assert right.status_code == 200 and health.status_code == 200  # probes need no key


# -- health and metrics ------------------------------------------------------------------------------------

async def test_health_is_503_until_the_engine_is_ready() -> None:
    loaded = asyncio.Event()

    class SlowLoading(ScriptedEngine):
        async def start(self) -> None:
            await loaded.wait()
            await super().start()

    engine = SlowLoading(ready_now=False)
    async with running_server(create_app(engine)) as base, httpx.AsyncClient(base_url=base) as http:
        loading = await http.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        loaded.set()
        await wait_for(lambda: engine.ready)
        ready = await http.get("/health")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    assert engine.stopped  # the lifespan stopped the engine on shutdown


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


async def test_metrics_counts_requests_and_records_histograms() -> None:
    engine = ScriptedEngine()
    async with running_server(create_app(engine)) as base:
        for _ in range(2):
            assert (await post(base, {**HELLO, "stream": True})).status_code == 200
        engine.refuse = QueueFullError()
        assert (await post(base, HELLO)).status_code == 429
        for size, seconds in ((1, 0.002), (3, 0.02), (3, 0.03)):
            engine._emit_step(size, seconds)  # what a scheduler reports after each decode step
        async with httpx.AsyncClient(base_url=base) as http:
            reply = await http.get("/metrics")
    text = reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    assert metric(text, "corolab_http_requests_total", '{endpoint="chat",status="200"}') == 2
    assert metric(text, "corolab_http_requests_total", '{endpoint="chat",status="429"}') == 1
    assert metric(text, "corolab_time_to_first_token_seconds_count", '{transport="http"}') == 2
    assert metric(text, "corolab_time_to_first_token_seconds_count", '{transport="websocket"}') == 0
    assert metric(text, "corolab_batch_size_count") == 3
    assert metric(text, "corolab_batch_size_bucket", '{le="1.0"}') == 1
    assert metric(text, "corolab_batch_size_bucket", '{le="4.0"}') == 3
    assert metric(text, "corolab_batch_size_sum") == 7
    assert metric(text, "corolab_decode_step_seconds_sum") == pytest.approx(0.052)
    for name in ("corolab_requests_running", "corolab_requests_waiting", "corolab_generated_tokens_total",
                 "corolab_prefix_cache_hit_tokens_total"):
        assert metric(text, name) >= 0
    # histogram buckets are cumulative
    for histogram in ("corolab_batch_size", "corolab_decode_step_seconds", "corolab_time_to_first_token_seconds"):
        labels = '{transport="http"}' if "token" in histogram else ""
        lines = [line for line in text.splitlines() if line.startswith(histogram + "_bucket{")
                 and ('transport="http"' in line or not labels)]
        counts = [float(line.rsplit(" ", 1)[1]) for line in lines]
        assert counts and counts == sorted(counts) and counts[-1] == metric(text, f"{histogram}_count", labels)


async def test_every_status_is_counted_in_metrics() -> None:
    app = create_app(ScriptedEngine(), api_key="k")
    key = {"Authorization": "Bearer k"}
    async with running_server(app) as base:
        await post(base, HELLO, headers=key)                                  # 200
        await post(base, {"messages": []}, headers=key)                       # 400: validation
        await post(base, HELLO)                                               # 401
        await post(base, {**HELLO, "model": "nope"}, headers=key)             # 404: model
        async with httpx.AsyncClient(base_url=base) as http:
            await http.get("/wp-admin", headers=key)                          # 404: path, label "other"
            text = (await http.get("/metrics")).text
    for labels in ('{endpoint="chat",status="200"}', '{endpoint="chat",status="400"}',
                   '{endpoint="chat",status="401"}', '{endpoint="chat",status="404"}',
                   '{endpoint="other",status="404"}'):
        assert metric(text, "corolab_http_requests_total", labels) == 1


async def test_ttft_of_a_plain_reply_is_taken_at_the_first_token_not_the_last() -> None:
    engine = ScriptedEngine(gate=asyncio.Event())
    app = create_app(engine)
    metrics = app.state.corolab.metrics
    async with running_server(app) as base:
        reply = asyncio.create_task(post(base, HELLO))
        await wait_for(lambda: metrics.sample("corolab_time_to_first_token_seconds_count", transport="http") == 1)  # observed while the reply is still held open
        assert not any(e == "end" for e, _ in engine.log)
        engine.gate.set()  # type: ignore[union-attr]
        assert (await reply).json()["choices"][0]["message"]["content"] == "echo: hello"
    assert metrics.sample("corolab_time_to_first_token_seconds_count", transport="http") == 1


async def test_plain_request_whose_client_leaves_frees_the_slot() -> None:
    """No stream to write to: the server must watch for the hang-up itself, or a timed-out client's
    request would hold its batch slot until max_tokens."""
    engine = ScriptedEngine(gate=asyncio.Event())
    app = create_app(engine)
    async with running_server(app) as base:
        reply = asyncio.create_task(post(base, HELLO))
        await wait_for(lambda: ("first", 1) in engine.log)
        reply.cancel()  # the client gives up: httpx closes the connection
        with pytest.raises(asyncio.CancelledError):
            await reply
        await wait_for(lambda: engine.calls[0].closed_early)
        await wait_for(lambda: app.state.corolab.metrics.sample("corolab_http_requests_total", endpoint="chat", status="499") == 1)
    assert engine.log == [("start", 1), ("first", 1), ("closed", 1)]


async def test_health_after_a_failed_load_shows_no_internals() -> None:
    class FailsToLoad(ScriptedEngine):
        async def start(self) -> None:
            raise OSError("no such file: /home/alice/models/secret.gguf")

    async with running_server(create_app(FailsToLoad(ready_now=False))) as base:
        async with httpx.AsyncClient(base_url=base) as http, asyncio.timeout(5):
            health = await http.get("/health")
            while health.json()["status"] == "loading":  # the load runs as a task after start-up
                health = await http.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "alice" not in health.text and "secret" not in health.text


async def test_ignore_eos_runs_to_the_token_limit() -> None:
    """vLLM's extension, which benchmarks use to fix every reply's length."""
    from corolab.serving.backends import load_backend
    from corolab.serving.engine import create_engine

    engine = create_engine("batched", load_backend("fake"))
    async with running_server(create_app(engine)) as base:
        await wait_healthy(base)
        fixed = (await post(base, {**HELLO, "model": "fake", "max_tokens": 40, "ignore_eos": True})).json()
        natural = (await post(base, {**HELLO, "model": "fake", "max_tokens": 40})).json()
    assert natural["usage"]["completion_tokens"] < 40 and natural["choices"][0]["finish_reason"] == "stop"
    assert fixed["usage"]["completion_tokens"] == 40 and fixed["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("kind", ["naive", "threads", "batched"])
async def test_real_engines_feed_the_step_histograms(kind: str) -> None:
    from corolab.serving.backends import load_backend
    from corolab.serving.engine import create_engine

    engine = create_engine(kind, load_backend("fake"))
    async with running_server(create_app(engine)) as base:
        await wait_healthy(base)
        reply = (await post(base, {**HELLO, "model": "fake"})).json()
        async with httpx.AsyncClient(base_url=base) as http:
            text = (await http.get("/metrics")).text
    assert reply["usage"]["completion_tokens"] > 1
    assert metric(text, "corolab_batch_size_count") >= 1 and metric(text, "corolab_decode_step_seconds_count") >= 1
    assert metric(text, "corolab_generated_tokens_total") == reply["usage"]["completion_tokens"]
    assert metric(text, "corolab_requests_running") == 0
