"""The clients against scripted servers: exact TTFT/ITL/TPOT/E2EL from a scripted clock, token counts
against the server's usage, and every error kind the tester reports."""

import asyncio
import json
import socket

import pytest
from bench_support import StepClock

from corolab.bench import BenchConfig, run_bench
from corolab.bench.config import endpoint_url
from corolab.bench.fakeserver import FakeChatServer, chunk, instant_reply, usage


def config(url, **kw):
    kw.setdefault("concurrency", 1)
    kw.setdefault("requests", 1)
    return BenchConfig(url=url, progress=False, heartbeat_interval=0, **kw)


def scripted(texts, *, usage_tokens=None, include_done=True, finish=True):
    async def handler(request, reply):
        reply.start_stream()
        for i, text in enumerate(texts):
            last = i == len(texts) - 1
            reply.event(chunk(text, finish="stop" if (last and finish) else None))
        if usage_tokens is not None:
            reply.event(chunk(usage=usage(4, usage_tokens)))
        if include_done:
            reply.event("[DONE]")
        reply.end_stream()

    return handler


async def one(handler, **kw):
    async with FakeChatServer(handler) as server:
        result = await run_bench(config(server.url, **kw))
    [run] = result.runs
    return run.records[0], run.summary


async def test_stream_metrics_are_exact_under_a_scripted_clock():
    # reads: send, three content events, the usage event, [DONE]
    clock = StepClock([0.0, 0.5, 0.7, 1.0, 1.1, 1.2])
    r, s = await one(scripted(["a", "b", "c"], usage_tokens=3), clock=clock)
    assert clock.reads == 6
    assert r.ok and r.text == "abc"
    assert r.ttft == pytest.approx(0.5)
    assert r.itl == pytest.approx([0.2, 0.3])
    assert r.e2el == pytest.approx(1.2)
    assert r.tpot == pytest.approx(0.7 / 2)
    assert s["ttft"]["mean"] == pytest.approx(0.5) and s["tpot"]["median"] == pytest.approx(0.35)
    assert s["duration"] == pytest.approx(1.2)
    assert s["output_throughput"] == pytest.approx(3 / 1.2)


async def test_usage_wins_over_chunk_count():
    # two tokens per chunk, as servers that batch detokenised text do: usage is the truth
    clock = StepClock([0.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    r, s = await one(scripted(["ab", "cd", "ef"], usage_tokens=6), clock=clock)
    assert (r.chunks, r.output_tokens, r.usage_from_server) == (3, 6, True)
    assert r.tpot == pytest.approx((3.0 - 1.0) / 5)
    assert s["usage_from_server"] == 1


async def test_without_usage_chunks_are_counted():
    clock = StepClock([0.0, 1.0, 2.0, 2.5])
    r, _ = await one(scripted(["a", "b"]), clock=clock)
    assert (r.output_tokens, r.usage_from_server) == (2, False)
    assert r.e2el == pytest.approx(2.5)


async def test_instant_server_usage_agrees_with_requested_tokens():
    async with FakeChatServer(instant_reply) as server:
        result = await run_bench(config(server.url, requests=20, concurrency=4, max_tokens=7))
    [run] = result.runs
    assert all(r.output_tokens == 7 == r.chunks and r.usage_from_server for r in run.records)
    assert run.summary["output_tokens"] == 140


async def test_nonstream_ttft_equals_e2el():
    clock = StepClock([0.0, 0.4])
    async with FakeChatServer(instant_reply) as server:
        result = await run_bench(config(server.url, mode="nonstream", max_tokens=5, clock=clock))
    r = result.runs[0].records[0]
    assert r.ok and r.ttft == r.e2el == pytest.approx(0.4) and r.output_tokens == 5


@pytest.mark.parametrize("status", [500, 429])
async def test_http_errors_are_classified_by_status(status):
    async def handler(request, reply):
        reply.json({"error": {"message": "nope", "type": "server_error"}}, status=status)

    r, s = await one(handler, requests=3)
    assert r.error == f"http_{status}" and "nope" in r.detail
    assert s["errors"] == {f"http_{status}": 3} and s["completed"] == 0


async def test_connection_dropped_mid_stream_is_a_broken_stream():
    async def handler(request, reply):
        reply.start_stream()
        reply.event(chunk("partial"))
        reply.abort()

    r, s = await one(handler)
    assert r.error == "broken_stream" and r.text == "partial"
    assert s["errors"] == {"broken_stream": 1}


async def test_stream_without_done_or_finish_is_broken():
    r, _ = await one(scripted(["a"], include_done=False, finish=False))
    assert r.error == "broken_stream"


async def test_silent_server_times_out():
    never = asyncio.Event()

    async def handler(request, reply):
        await never.wait()  # cancelled when the server stops

    r, s = await one(handler, timeout=0.05)
    assert r.error == "timeout" and s["errors"] == {"timeout": 1}


async def test_refused_connection_is_a_connect_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run_bench(config(f"http://127.0.0.1:{port}", requests=2))
    assert result.runs[0].summary["errors"] == {"connect": 2}


async def test_error_event_inside_a_stream():
    async def handler(request, reply):
        reply.start_stream()
        reply.event({"error": {"message": "engine died"}})
        reply.end_stream()

    r, _ = await one(handler)
    assert r.error == "stream_error" and "engine died" in r.detail


async def test_api_key_and_body_reach_the_server():
    seen = []

    async def handler(request, reply):
        seen.append(request)
        await instant_reply(request, reply)

    async with FakeChatServer(handler) as server:
        await run_bench(config(server.url, api_key="sk-test", max_tokens=3, model="m1"))
    [body] = seen
    assert body["model"] == "m1" and body["max_tokens"] == 3 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][-1]["role"] == "user"


def test_endpoint_urls():
    assert endpoint_url("http://h:8000", "stream") == "http://h:8000/v1/chat/completions"
    assert endpoint_url("http://h:8000/v1/", "nonstream") == "http://h:8000/v1/chat/completions"
    assert endpoint_url("https://api.x.com/v1/chat/completions", "stream") == "https://api.x.com/v1/chat/completions"
    assert endpoint_url("http://h:8000", "ws") == "ws://h:8000/ws/chat"
    assert endpoint_url("ws://h:8000/ws/chat", "stream") == "http://h:8000/v1/chat/completions"
    assert endpoint_url("h:8000", "stream") == "http://h:8000/v1/chat/completions"


# -- websocket -------------------------------------------------------------------------------------------

async def ws_server(frames_for):
    from websockets.asyncio.server import serve

    async def handler(ws):
        async for raw in ws:
            for frame in frames_for(json.loads(raw)):
                await ws.send(json.dumps(frame))

    return await serve(handler, "127.0.0.1", 0)


async def test_websocket_frames_in_corolab_format():
    received = []

    def frames(req):
        received.append(req)
        return [
            {"type": "delta", "delta": "Hel", "response": "Hel"},
            {"type": "delta", "delta": "lo", "response": "Hello"},
            {"type": "delta", "delta": "!", "response": "Hello!"},
            {"type": "final", "response": "Hello!", "history": [[req["query"], "Hello!"]],
             "finish_reason": "stop", "usage": usage(3, 4)},
        ]

    server = await ws_server(frames)
    port = server.sockets[0].getsockname()[1]
    try:
        clock = StepClock([0.0, 0.2, 0.5, 0.6, 0.7, 10.0, 10.1, 10.3, 10.4, 10.5])
        result = await run_bench(config(f"http://127.0.0.1:{port}", mode="ws", requests=2, clock=clock,
                                        max_tokens=4))
    finally:
        server.close()
        await server.wait_closed()
    first, second = result.runs[0].records
    assert first.ok and first.text == "Hello!" and first.chunks == 3
    assert first.ttft == pytest.approx(0.2) and first.itl == pytest.approx([0.3, 0.1])
    assert first.e2el == pytest.approx(0.7) and first.output_tokens == 4
    assert first.tpot == pytest.approx(0.5 / 3)
    assert second.ok and second.ttft == pytest.approx(0.1)  # the reused connection
    assert received[0]["max_tokens"] == 4 and received[0]["history"] == [] and "query" in received[0]


async def test_websocket_error_frame():
    server = await ws_server(lambda req: [{"type": "error", "error": {"message": "bad frame"}}])
    port = server.sockets[0].getsockname()[1]
    try:
        result = await run_bench(config(f"ws://127.0.0.1:{port}/ws/chat", mode="ws"))
    finally:
        server.close()
        await server.wait_closed()
    r = result.runs[0].records[0]
    assert r.error == "stream_error" and "bad frame" in r.detail


async def test_httpx_transport_gives_the_same_counts():
    async with FakeChatServer(instant_reply) as server:
        result = await run_bench(config(server.url, requests=6, concurrency=2, max_tokens=4, transport="httpx"))
    run = result.runs[0]
    assert run.summary["completed"] == 6 and all(r.output_tokens == 4 == r.chunks for r in run.records)


async def test_websocket_server_that_closes_after_each_answer():
    """The seed's socket closed after answering; a kept connection must then be replaced, not fail."""
    from websockets.asyncio.server import serve

    connections = 0

    async def handler(ws):
        nonlocal connections
        connections += 1
        req = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "delta", "delta": "x", "response": "x"}))
        await ws.send(json.dumps({"type": "final", "response": "x", "history": [[req["query"], "x"]],
                                  "finish_reason": "stop", "usage": usage(1, 1)}))
        await ws.close()

    server = await serve(handler, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await run_bench(config(f"ws://127.0.0.1:{port}/ws/chat", mode="ws", requests=4))
    finally:
        server.close()
        await server.wait_closed()
    assert result.runs[0].summary["completed"] == 4 and connections == 4


async def test_websocket_refused_is_a_connect_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run_bench(config(f"ws://127.0.0.1:{port}/ws/chat", mode="ws", requests=2))
    assert result.runs[0].summary["errors"] == {"connect": 2}


async def test_open_loop_against_a_server():
    async with FakeChatServer(instant_reply) as server:
        result = await run_bench(config(server.url, concurrency=None, rate=[500.0, 1000.0], requests=25,
                                        max_tokens=2, max_concurrency=4))
    assert [r.kind for r in result.runs] == ["rate", "rate"]
    assert all(r.summary["completed"] == 25 and r.peak_in_flight <= 4 for r in result.runs)
