"""The wire format: OpenAI Chat Completions as the official client sends and parses it, plus the seed's
ChatGLM-era extras (``max_length``) and its websocket ``{query, history}`` frames.

Only data shapes live here, no transport: the server validates requests with these models and builds
responses from them, and the load tester parses with the same field names.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant", "developer", "tool"]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The sampling fields that both ``POST /v1/chat/completions`` and a websocket frame may carry."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    max_length: Annotated[int, Field(ge=1)] | None = None  # the seed's ChatGLM-era name
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False  # vLLM's extension: run to the token limit, so a benchmark fixes output lengths

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def token_limit(self, default: int) -> int:
        """The newest name wins: ``max_completion_tokens``, then ``max_tokens``, then the seed's ``max_length``."""
        return self.max_completion_tokens or self.max_tokens or self.max_length or default


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``. Unknown OpenAI fields are accepted and ignored, as OpenAI's own
    servers do with fields a model does not support; fields we do read are validated strictly."""

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    user: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None
    logprobs: None = None


class CompletionObject(BaseModel):
    """What a whole reply and each streamed chunk of it share: one id, one creation time, one model name."""

    id: str
    created: int
    model: str


class ChatCompletion(CompletionObject):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(CompletionObject):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "corolab"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


# -- websocket: the seed's frames ---------------------------------------------------------------------

class WsRequest(SamplingFields):
    """One question on ``ws /ws/chat``: the seed's ``{query, history: [[q, a], ...]}``, or OpenAI-style
    ``messages``. Sampling fields as in the HTTP request."""

    query: str | None = None
    history: list[Annotated[list[str], Field(min_length=2, max_length=2)]] = Field(default_factory=list)
    messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _query_or_messages(self) -> WsRequest:
        if (self.query is None) == (self.messages is None):
            raise ValueError("send either 'query' (with optional 'history') or 'messages'")
        return self

    def chat(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [{"role": m.role, "content": m.text()} for m in self.messages]
        turns: list[dict[str, str]] = []
        for question, answer in self.history:
            turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return turns + [{"role": "user", "content": self.query or ""}]


class WsDelta(BaseModel):
    """Sent while the reply grows: ``delta`` is the new text, ``response`` the whole reply so far."""

    type: Literal["delta"] = "delta"
    delta: str
    response: str


class WsFinal(BaseModel):
    """Sent once per question: the full reply and the history to send with the next question."""

    type: Literal["final"] = "final"
    response: str
    history: list[list[str]]
    finish_reason: str
    usage: Usage


class WsError(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=False)
