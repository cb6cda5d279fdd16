"""``corolab.serving.protocol``: what the server accepts, and that what it sends parses with OpenAI's own types."""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletion as OpenAIChatCompletion
from openai.types.chat import ChatCompletionChunk as OpenAIChunk
from pydantic import ValidationError

from corolab.serving.protocol import (
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice, DeltaMessage, ErrorDetail,
    ErrorResponse, ModelCard, ModelList, ResponseMessage, Usage, WsRequest,
)
from corolab.serving.params import LimitError
from corolab.serving.server.sse import ChunkWriter

SEED_BODY = {
    "messages": [
        {"role": "system", "content": "你是人工智能助手"},
        {"role": "user", "content": "海贼王作者是谁"},
        {"role": "assistant", "content": "海贼王的作者是中国漫画家藤本树。"},
        {"role": "user", "content": "他出生时间是什么"},
    ],
    "stream": False, "model": "gpt-3.5-turbo", "temperature": 0.5, "max_length": 100, "top_p": 1,
}


def request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **fields})


def test_the_seed_request_parses_with_max_length_as_prompt_plus_reply() -> None:
    body = ChatCompletionRequest.model_validate(SEED_BODY)
    assert [m.role for m in body.messages] == ["system", "user", "assistant", "user"]
    # 91 is the prompt's length in tokens with the embedded model's chat template: 9 tokens left to reply
    assert body.to_sampling_params(prompt_tokens=91, context_window=8192, default_max_tokens=256).max_tokens == 9
    assert (body.temperature, body.top_p, body.stream) == (0.5, 1.0, False)


@pytest.mark.parametrize("fields, limit", [
    ({}, 256),                                                                   # the server's default
    ({"max_length": 100}, 90),                                                   # prompt plus reply
    ({"max_length": 100, "max_tokens": 50}, 50),                                 # the smaller limit wins
    ({"max_length": 30, "max_tokens": 50}, 20),
    ({"max_length": 100, "max_tokens": 50, "max_completion_tokens": 20}, 20),    # the newest name wins
    ({"max_tokens": 5000}, 4096 - 10),                                           # clamped to the context
])
def test_one_mapping_decides_the_reply_limit(fields: dict, limit: int) -> None:
    assert request(**fields).to_sampling_params(10, 4096, 256).max_tokens == limit


@pytest.mark.parametrize("fields, prompt, param", [({"max_length": 10}, 10, "max_length"), ({}, 4096, "messages")])
def test_a_prompt_that_leaves_no_room_is_refused_naming_the_field(fields: dict, prompt: int, param: str) -> None:
    with pytest.raises(LimitError) as refused:
        request(**fields).to_sampling_params(prompt, 4096, 256)
    assert refused.value.param == param


def test_content_as_text_parts_and_stop_as_string_or_list() -> None:
    parts = ChatCompletionRequest.model_validate({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]}]})
    assert parts.messages[0].text() == "one two"
    assert request(stop="END").stop_list() == ("END",)
    assert request(stop=["a", "b"]).stop_list() == ("a", "b")
    assert request().stop_list() == ()


def test_ignore_eos_is_accepted_in_http_and_websocket_requests() -> None:
    assert request(ignore_eos=True).ignore_eos and not request().ignore_eos
    frame = WsRequest.model_validate({"query": "q", "ignore_eos": True, "max_completion_tokens": 8})
    assert frame.to_sampling_params(1, 64, 1).max_tokens == 8 and frame.ignore_eos


def test_other_openai_fields_are_tolerated() -> None:
    body = request(frequency_penalty=0.5, presence_penalty=0.1, logit_bias={"50256": -100}, logprobs=False,
                   response_format={"type": "text"}, user="alice", n=1, stream_options={"include_usage": True},
                   service_tier="auto", parallel_tool_calls=False)
    assert body.user == "alice" and body.stream_options and body.stream_options.include_usage


@pytest.mark.parametrize("fields", [
    {"n": 2}, {"temperature": 2.5}, {"top_p": 0}, {"max_tokens": 0}, {"stop": ["1", "2", "3", "4", "5"]},
    {"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
])
def test_invalid_requests_are_rejected(fields: dict) -> None:
    with pytest.raises(ValidationError):
        request(**fields)


def test_responses_parse_with_the_official_client_types() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    completion = ChatCompletion(id="chatcmpl-1", created=1, model="m", usage=usage,
                                choices=[Choice(message=ResponseMessage(content="hi"), finish_reason="stop")])
    parsed = OpenAIChatCompletion.model_validate(completion.model_dump(mode="json"))
    assert parsed.choices[0].message.content == "hi" and parsed.usage and parsed.usage.total_tokens == 5

    chunk = ChatCompletionChunk(id="chatcmpl-1", created=1, model="m",
                                choices=[ChunkChoice(delta=DeltaMessage(content="h"))])
    assert OpenAIChunk.model_validate(chunk.model_dump(mode="json")).choices[0].delta.content == "h"
    assert ModelList(data=[ModelCard(id="m", created=1)]).model_dump()["object"] == "list"


def test_error_body_has_openais_shape() -> None:
    body = ErrorResponse(error=ErrorDetail(message="no", type="invalid_request_error", param="n")).model_dump()
    assert body == {"error": {"message": "no", "type": "invalid_request_error", "param": "n", "code": None}}


@pytest.mark.parametrize("text", ["plain", 'quotes " and \\ backslashes', "海贼王\n", "\u2028 emoji 🎉", ""])
def test_fast_content_chunks_equal_the_model_dump(text: str) -> None:
    """``ChunkWriter.content`` builds its JSON from a template (the hot path); it must say exactly what the
    pydantic model says."""
    writer = ChunkWriter("chatcmpl-x", 123, "m")
    event = writer.content(text).decode()
    assert event.startswith("data: ") and event.endswith("\n\n") and "\n" not in event[:-2]
    expected = ChatCompletionChunk(id="chatcmpl-x", created=123, model="m",
                                   choices=[ChunkChoice(delta=DeltaMessage(content=text))])
    payload = event[len("data: "):]
    assert ChatCompletionChunk.model_validate_json(payload) == expected
    assert json.loads(payload)["choices"][0]["delta"]["content"] == text


def test_websocket_frames_seed_history_and_messages() -> None:
    seed = WsRequest.model_validate({"query": "I want to drive car", "history": [["hhh", "sorry"]]})
    assert seed.chat() == [{"role": "user", "content": "hhh"}, {"role": "assistant", "content": "sorry"},
                           {"role": "user", "content": "I want to drive car"}]
    openai_style = WsRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "max_length": 9})
    assert openai_style.chat() == [{"role": "user", "content": "hi"}] and openai_style.max_length == 9
    for bad in ({}, {"query": "a", "messages": [{"role": "user", "content": "b"}]},
                {"query": "a", "history": [["no answer"]]}):
        with pytest.raises(ValidationError):
            WsRequest.model_validate(bad)
