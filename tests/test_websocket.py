"""``ws /ws/chat``: the seed's {query, history} protocol over a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from scripted_engine import ScriptedEngine, running_server, wait_for, wait_healthy
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from corolab.serving.engine.base import QueueFullError
from corolab.serving.params import LimitError
from corolab.serving.server.app import create_app

SEED_HISTORY = [
    ["hhh", "I'm sorry, but I'm not sure what you're asking me."],
    ["how are you", "As an AI language model, I don't have feelings."],
]


def ws_url(base: str, suffix: str = "") -> str:
    return base.replace("http://", "ws://") + "/ws/chat" + suffix


async def ask(ws: ClientConnection, frame: dict | str | bytes) -> tuple[list[dict], dict]:
    """Send one frame; return the delta frames and the last frame (``final`` or ``error``)."""
    await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
    deltas = []
    async with asyncio.timeout(10):
        while True:
            reply = json.loads(await ws.recv())
            if reply["type"] != "delta":
                return deltas, reply
            deltas.append(reply)


async def test_seed_query_and_history_round_trip() -> None:
    engine = ScriptedEngine(pieces=4)
    async with running_server(create_app(engine)) as base, connect(ws_url(base)) as ws:
        deltas, final = await ask(ws, {"query": "I want to drive car", "history": SEED_HISTORY})

        assert final["type"] == "final" and final["finish_reason"] == "stop"
        assert final["response"] == "echo: I want to drive car"
        assert len(deltas) == 4
        assert "".join(d["delta"] for d in deltas) == final["response"]
        # every delta frame carries the whole reply so far, as the seed's client expects
        assert [d["response"] for d in deltas] == [final["response"][:len(d["response"])] for d in deltas]
        assert deltas[-1]["response"] == final["response"]
        assert final["history"] == SEED_HISTORY + [["I want to drive car", final["response"]]]
        assert final["usage"]["total_tokens"] == final["usage"]["prompt_tokens"] + final["usage"]["completion_tokens"]
        # the history became alternating user/assistant turns before the new question
        assert engine.calls[0].messages == [
            {"role": "user", "content": "hhh"}, {"role": "assistant", "content": SEED_HISTORY[0][1]},
            {"role": "user", "content": "how are you"}, {"role": "assistant", "content": SEED_HISTORY[1][1]},
            {"role": "user", "content": "I want to drive car"},
        ]

        # the same connection answers the next question, fed with the history it returned
        _, second = await ask(ws, {"query": "and a bike?", "history": final["history"]})
        assert second["history"][:-1] == final["history"]
        assert second["history"][-1] == ["and a bike?", "echo: and a bike?"]
        assert len(engine.calls) == 2 and len(engine.calls[1].messages) == 7


async def test_messages_frame_and_sampling_fields() -> None:
    engine = ScriptedEngine()
    async with running_server(create_app(engine)) as base, connect(ws_url(base)) as ws:
        _, final = await ask(ws, {"messages": [{"role": "system", "content": "be brief"},
                                               {"role": "user", "content": "hi"}],
                                  "max_length": 17, "temperature": 0.2, "top_p": 0.9, "seed": 3, "stop": "x"})
        _, default = await ask(ws, {"query": "again", "max_tokens": 5, "stop": ["a", "b"], "ignore_eos": True})

    assert final["history"] == [["hi", "echo: hi"]]
    first, second = engine.calls[0].params, engine.calls[1].params
    # max_length counts prompt plus reply: 17 minus the 10-token prompt ("be brief" + "hi")
    assert (first.max_tokens, first.temperature, first.top_p, first.seed, first.stop) == (7, 0.2, 0.9, 3, ("x",))
    assert (second.max_tokens, second.stop, second.ignore_eos, first.ignore_eos) == (5, ("a", "b"), True, False)
    assert engine.calls[0].messages[0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize("frame, fragment", [
    ("this is not json", "not valid JSON"),
    ('{"history": []}', "either 'query'"),
    ('{"query": "a", "messages": [{"role": "user", "content": "b"}]}', "either 'query'"),
    ('{"query": "a", "history": [["only the question"]]}', "history"),
    ('{"query": "a", "temperature": 9}', "temperature"),
    ('[1, 2, 3]', ""),
])
async def test_malformed_frame_gets_error_frame_and_connection_lives(frame: str, fragment: str) -> None:
    engine = ScriptedEngine()
    async with running_server(create_app(engine)) as base, connect(ws_url(base)) as ws:
        deltas, error = await ask(ws, frame)
        assert deltas == [] and error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error" and error["error"]["code"] == "invalid_frame"
        assert fragment in error["error"]["message"]
        assert "Traceback" not in error["error"]["message"] and "/src/" not in error["error"]["message"]
        assert engine.calls == []

        _, final = await ask(ws, {"query": "still there?"})
        assert final["response"] == "echo: still there?"


async def test_binary_frames_are_read_as_utf8_json() -> None:
    async with running_server(create_app(ScriptedEngine())) as base, connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"query": "海贼王作者是谁"}).encode())
        async with asyncio.timeout(10):
            while (frame := json.loads(await ws.recv()))["type"] == "delta":
                pass
        assert frame["response"] == "echo: 海贼王作者是谁"
        _, error = await ask(ws, b"\xff\xfe")
        assert error["type"] == "error"


@pytest.mark.parametrize("refusal, error_type, code", [
    (QueueFullError(), "rate_limit_error", "queue_full"),
    (LimitError("the prompt does not fit the context window"), "invalid_request_error",
     "context_length_exceeded"),
])
async def test_engine_refusal_becomes_error_frame(refusal: Exception, error_type: str, code: str) -> None:
    engine = ScriptedEngine(refuse=refusal)  # type: ignore[arg-type]
    async with running_server(create_app(engine)) as base, connect(ws_url(base)) as ws:
        _, error = await ask(ws, {"query": "hello"})
        assert (error["type"], error["error"]["type"], error["error"]["code"]) == ("error", error_type, code)
        engine.refuse = None
        _, final = await ask(ws, {"query": "hello"})
        assert final["type"] == "final"
        async with httpx.AsyncClient(base_url=base) as http:
            metrics = (await http.get("/metrics")).text
    assert 'endpoint="ws"' in metrics


async def test_unexpected_engine_failure_is_reported_without_internals() -> None:
    engine = ScriptedEngine(fail_midway=RuntimeError("secret /srv/path/model.bin exploded"))
    async with running_server(create_app(engine)) as base, connect(ws_url(base)) as ws:
        deltas, error = await ask(ws, {"query": "hello"})
        assert len(deltas) == 1 and error["type"] == "error"
        assert "secret" not in error["error"]["message"] and "/srv" not in error["error"]["message"]
        engine.fail_midway = None
        _, final = await ask(ws, {"query": "again"})
        assert final["type"] == "final"


async def test_many_connections_are_answered_at_once() -> None:
    """Each reply is held open after its first delta: all three can only get there if the server serves
    the connections concurrently (the seed's server answered one client at a time)."""
    engine = ScriptedEngine(gate=asyncio.Event())
    async with running_server(create_app(engine)) as base:
        sockets = [await connect(ws_url(base)) for _ in range(3)]
        try:
            replies = [asyncio.create_task(ask(ws, {"query": f"q{i}"})) for i, ws in enumerate(sockets)]
            await wait_for(lambda: sum(event == "first" for event, _ in engine.log) == 3)
            assert not any(event == "end" for event, _ in engine.log)  # three replies in flight together
            engine.gate.set()  # type: ignore[union-attr]
            finals = [final for _, final in await asyncio.gather(*replies)]
        finally:
            for ws in sockets:
                await ws.close()
    assert [f["response"] for f in finals] == ["echo: q0", "echo: q1", "echo: q2"]  # no cross-talk


async def test_client_leaving_mid_reply_closes_the_engine_iterator_at_once() -> None:
    """The engine is silent (held at the gate), so only the reader task can notice the disconnect."""
    engine = ScriptedEngine(gate=asyncio.Event())
    app = create_app(engine)
    async with running_server(app) as base:
        async with connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"query": "a long answer please"}))
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert first["type"] == "delta"
        await wait_for(lambda: engine.calls[0].closed_early)
        assert engine.stats().running == 0
        assert engine.log == [("start", 1), ("first", 1), ("closed", 1)]
        assert app.state.corolab.metrics.sample("corolab_http_requests_total", endpoint="ws", status="499") == 1


async def test_frames_sent_ahead_are_answered_in_order() -> None:
    engine = ScriptedEngine()
    async with running_server(create_app(engine)) as base, connect(ws_url(base)) as ws:
        for q in ("one", "two", "three"):
            await ws.send(json.dumps({"query": q}))
        finals = []
        async with asyncio.timeout(10):
            while len(finals) < 3:
                frame = json.loads(await ws.recv())
                if frame["type"] == "final":
                    finals.append(frame["response"])
    assert finals == ["echo: one", "echo: two", "echo: three"]


async def test_api_key_is_required_when_set() -> None:
    app = create_app(ScriptedEngine(), api_key="sekret")
    async with running_server(app) as base:
        with pytest.raises(InvalidStatus):
            async with connect(ws_url(base)):
                pass
        async with connect(ws_url(base), additional_headers={"Authorization": "Bearer sekret"}) as ws:
            assert (await ask(ws, {"query": "hi"}))[1]["type"] == "final"
        async with connect(ws_url(base, "?api_key=sekret")) as ws:  # browsers cannot send headers
            assert (await ask(ws, {"query": "hi"}))[1]["type"] == "final"


@pytest.mark.parametrize("kind", ["naive", "threads", "batched"])
async def test_fake_backend_through_each_engine(kind: str) -> None:
    """Integration: the real engines over the deterministic fake model, multibyte text included."""
    from corolab.serving.backends import load_backend
    from corolab.serving.engine import create_engine

    backend = load_backend("fake")
    engine = create_engine(kind, backend, max_batch_size=4, max_waiting=8)
    async with running_server(create_app(engine)) as base:
        await wait_healthy(base)
        async with connect(ws_url(base)) as ws:
            history: list[list[str]] = []
            for query in ("海贼王作者是谁", "他出生时间是什么"):
                deltas, final = await ask(ws, {"query": query, "history": history})
                assert final["type"] == "final", final
                assert query in final["response"] and "\ufffd" not in final["response"]
                assert "".join(d["delta"] for d in deltas) == final["response"]
                assert final["usage"]["completion_tokens"] == len(final["response"].encode())  # byte tokens
                history = final["history"]
        assert [q for q, _ in history] == ["海贼王作者是谁", "他出生时间是什么"]


async def test_queued_client_that_leaves_frees_its_place_at_once() -> None:
    """Integration with the batched engine: one slot, one reply running, a second client queued. The queued
    client sends nothing and receives nothing, so only the reader task can see it leave."""
    from corolab.serving.backends import load_backend
    from corolab.serving.engine import create_engine

    engine = create_engine("batched", load_backend("fake:0.01"), max_batch_size=1, max_waiting=4)
    async with running_server(create_app(engine)) as base:
        await wait_healthy(base)
        async with connect(ws_url(base)) as running:
            long_question = "tell me a long story " * 10  # the fake echoes it: ~200 steps of 10 ms
            reply = asyncio.create_task(ask(running, {"query": long_question}))
            await wait_for(lambda: engine.stats().running == 1)
            async with connect(ws_url(base)) as queued:
                await queued.send(json.dumps({"query": "me too"}))
                await wait_for(lambda: engine.stats().waiting == 1)
            await wait_for(lambda: engine.stats().waiting == 0)
            assert engine.stats().running == 1 and not reply.done()  # left the queue before the slot freed up
            _, final = await reply
        assert final["type"] == "final" and long_question in final["response"]
        assert engine.stats().requests_finished == 1  # the queued request never ran
