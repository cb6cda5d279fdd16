"""The official ``openai`` client, unmodified, against a real uvicorn server: sync, async and streaming.

If these pass, the server speaks the protocol as OpenAI's own client sends and parses it, which is the
promise of "OpenAI-compatible". The seed's curl request is replayed byte for byte with httpx.
"""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from scripted_engine import ScriptedEngine, running_server, wait_healthy

from corolab.serving.engine.base import QueueFullError
from corolab.serving.server.app import create_app

SEED_CURL_BODY = """{
    "messages": [
        {  "role": "system",
           "content":"你是人工智能助手"
         },
        {
            "role": "user",
            "content":"海贼王作者是谁"
        },
       {
        "role": "assistant",
        "content": "海贼王的作者是中国漫画家藤本树。"
       },
       {"role":"user", "content":"他出生时间是什么"}
    ],
    "stream": false,
    "model": "gpt-3.5-turbo",
    "temperature": 0.5,
    "max_length": 100,
    "top_p": 1
}"""


def sync_client(base: str, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


async def test_sync_client_plain_and_streamed() -> None:
    engine = ScriptedEngine(pieces=3)
    async with running_server(create_app(engine)) as base:
        def use_client() -> tuple[object, list[object], list[str]]:
            client = sync_client(base)
            models = [m.id for m in client.models.list()]
            reply = client.chat.completions.create(
                model="scripted-model", messages=[{"role": "user", "content": "hello"}], max_tokens=9, seed=1)
            stream = client.chat.completions.create(
                model="scripted-model", messages=[{"role": "user", "content": "streamed"}], stream=True,
                stream_options={"include_usage": True})
            return reply, list(stream), models

        reply, chunks, models = await asyncio.to_thread(use_client)

    assert "scripted-model" in models
    assert reply.object == "chat.completion" and reply.choices[0].message.content == "echo: hello"  # type: ignore[attr-defined]
    assert reply.choices[0].finish_reason == "stop"  # type: ignore[attr-defined]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens  # type: ignore[attr-defined]
    assert engine.calls[0].params.max_tokens == 9 and engine.calls[0].params.seed == 1

    assert all(c.object == "chat.completion.chunk" for c in chunks)  # type: ignore[attr-defined]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # type: ignore[attr-defined]
    assert text == "echo: streamed"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]  # type: ignore[attr-defined]
    usage_chunks = [c for c in chunks if c.usage is not None]  # type: ignore[attr-defined]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and usage_chunks[0].choices == []  # type: ignore[attr-defined]
    assert len({c.id for c in chunks}) == 1  # type: ignore[attr-defined]


async def test_async_client_concurrent_streams_overlap() -> None:
    engine = ScriptedEngine(gate=asyncio.Event())
    async with running_server(create_app(engine)) as base:
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)

        async def chat(q: str) -> str:
            stream = await client.chat.completions.create(
                model="scripted-model", messages=[{"role": "user", "content": q}], stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        tasks = [asyncio.create_task(chat(f"q{i}")) for i in range(3)]
        async with asyncio.timeout(10):
            while sum(e == "first" for e, _ in engine.log) < 3:
                await asyncio.sleep(0.005)
        assert not any(e == "end" for e, _ in engine.log)  # three streams open at the same time
        engine.gate.set()  # type: ignore[union-attr]
        assert await asyncio.gather(*tasks) == ["echo: q0", "echo: q1", "echo: q2"]
        await client.close()


async def test_client_raises_the_matching_exceptions() -> None:
    engine = ScriptedEngine()
    async with running_server(create_app(engine, api_key="sekret")) as base:
        def calls() -> list[type[Exception]]:
            raised = []
            for client, kwargs in [
                (sync_client(base, api_key="wrong"), {"model": "scripted-model"}),
                (sync_client(base, api_key="sekret"), {"model": "no-such-model"}),
                (sync_client(base, api_key="sekret"), {"model": "scripted-model", "n": 2}),
            ]:
                try:
                    client.chat.completions.create(messages=[{"role": "user", "content": "x"}], **kwargs)
                except openai.APIStatusError as exc:
                    raised.append(type(exc))
            engine.refuse = QueueFullError(retry_after=3)
            try:
                sync_client(base, api_key="sekret").chat.completions.create(
                    model="scripted-model", messages=[{"role": "user", "content": "x"}])
            except openai.RateLimitError as exc:
                assert exc.response.headers["retry-after"] == "3"
                raised.append(type(exc))
            return raised

        raised = await asyncio.to_thread(calls)
    assert raised == [openai.AuthenticationError, openai.NotFoundError, openai.BadRequestError,
                      openai.RateLimitError]


@pytest.mark.parametrize("kind", ["naive", "threads", "batched"])
async def test_seed_curl_request_on_the_fake_model(kind: str) -> None:
    """The seed's exact request body (ChatGLM-era ``max_length`` included) through each real engine."""
    from corolab.serving.backends import load_backend
    from corolab.serving.engine import create_engine

    engine = create_engine(kind, load_backend("fake"))
    headers = {"accept": "application/json", "Content-Type": "application/json"}
    async with running_server(create_app(engine)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            await wait_healthy(base)
            # The fake tokenizer counts bytes: this prompt is 163 "tokens", more than max_length=100 allows
            # for prompt plus reply. A clear 400 that names the field, not a silent empty reply.
            refused = await http.post("/v1/chat/completions", content=SEED_CURL_BODY.encode(), headers=headers)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["param"] == "max_length" and "prompt plus the reply" in error["message"]
            roomier = SEED_CURL_BODY.replace('"max_length": 100', '"max_length": 300')
            reply = await http.post("/v1/chat/completions", content=roomier.encode(), headers=headers)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "chat.completion" and body["model"] == "gpt-3.5-turbo"
        assert "他出生时间是什么" in body["choices"][0]["message"]["content"]
        usage = body["usage"]
        assert usage["prompt_tokens"] == 163 and usage["prompt_tokens"] + usage["completion_tokens"] <= 300

        def streamed() -> str:
            stream = sync_client(base).chat.completions.create(
                model="gpt-3.5-turbo", messages=[{"role": "user", "content": "海贼王作者是谁"}], stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        text = await asyncio.to_thread(streamed)
        assert "海贼王作者是谁" in text and "\ufffd" not in text
