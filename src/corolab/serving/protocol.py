"""The wire format: OpenAI Chat Completions as the official client sends and parses it, plus ChatGLM's
extras (``max_length``) and the two websocket protocols' frames.

Only data shapes live here, no transport, and one decision: :meth:`SamplingFields.to_sampling_params`
maps a request's fields to what the engine runs (the same for an HTTP body and a websocket frame), the way
vLLM's ``ChatCompletionRequest.to_sampling_params`` does. The load tester parses with the same names.

Requests are validated strictly: ``"stream": "yes"`` or ``"max_tokens": "5"`` is a 400, as OpenAI's own
API answers, not a value silently coerced. Integers follow JSON Schema: ``5.0`` is the integer 5, ``5.5``
is a 400. :func:`describe_invalid` writes each refusal for a person: the field, and what it allows.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from corolab.serving.params import MAX_SEED, SamplingParams, reply_limit

Role = Literal["system", "user", "assistant", "developer", "tool"]

#: The largest token limit a request may name. Larger values are refused (400), not wrapped or clamped
#: silently; any allowed value is then clamped to the model's context window.
MAX_TOKEN_LIMIT = 2**31 - 1


def _encodable(text: str) -> str:
    """JSON may carry a lone surrogate (``"\\ud800"``), which no tokenizer can encode: refuse it here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text contains an unpaired surrogate (invalid Unicode)") from None
    return text


def _integral(value: object) -> object:
    """JSON Schema's integers include ``1.0`` (and the OpenAPI document says ``integer``); ``1.5`` is no
    integer and stays a float, which strict validation then refuses. ``true`` is no integer either."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Text = Annotated[str, AfterValidator(_encodable)]
ToInteger = BeforeValidator(_integral)  # after the bounds in ``Annotated``, so the schema keeps them
TokenLimit = Annotated[int, Field(ge=1, le=MAX_TOKEN_LIMIT), ToInteger]
REQUEST_CONFIG = ConfigDict(extra="ignore", strict=True)


class TextPart(BaseModel):
    model_config = REQUEST_CONFIG
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = REQUEST_CONFIG

    role: Role
    content: Text | list[TextPart] | None = None
    name: Text | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


def chat_of(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The engine's view of a conversation: role and plain text per message."""
    return [{"role": m.role, "content": m.text()} for m in messages]


class StreamOptions(BaseModel):
    model_config = REQUEST_CONFIG
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The sampling fields that both ``POST /v1/chat/completions`` and a websocket frame may carry."""

    model_config = REQUEST_CONFIG

    max_tokens: TokenLimit | None = None
    max_completion_tokens: TokenLimit | None = None
    max_length: TokenLimit | None = None  # ChatGLM's and Hugging Face's: prompt plus reply
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), ToInteger] | None = None
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None  # OpenAI allows at most 4
    ignore_eos: bool = False  # vLLM's extension: run to the token limit, so a benchmark fixes output lengths

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def to_sampling_params(self, prompt_tokens: int, context_window: int, default_max_tokens: int) -> SamplingParams:
        """What the engine runs for this request, once its prompt is tokenized.

        The reply limit: ``max_completion_tokens`` (the newest name) or ``max_tokens`` for the reply alone,
        ``max_length`` for prompt plus reply, the smaller if both, ``default_max_tokens`` if neither; then
        clamped to the context window (:func:`corolab.serving.params.reply_limit`, which raises
        :class:`~corolab.serving.params.LimitError` when the prompt leaves no room).
        """
        limit = reply_limit(prompt_tokens, context_window, max_tokens=self.max_completion_tokens or self.max_tokens,
                            max_length=self.max_length, default=default_max_tokens)
        return SamplingParams(max_tokens=limit, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                              stop=self.stop_list(), ignore_eos=self.ignore_eos)


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``. Unknown OpenAI fields are accepted and ignored, as OpenAI's own
    servers do with fields a model does not support; fields we do read are validated strictly."""

    model: Text | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1), ToInteger] = 1
    user: Text | None = None


#: What a field allows, for the refusals pydantic words as one error per member of a union.
ALLOWED = {
    "content": "a string, or a list of text parts like {\"type\": \"text\", \"text\": \"...\"}",
    "stop": "a string, or a list of at most 4 strings",
    "messages": "a list of at least one message like {\"role\": \"user\", \"content\": \"...\"}",
}
#: (field, pydantic's error type) -> what to say instead of pydantic's words.
SAYINGS = {
    ("stop", "too_long"): "at most 4 stop sequences are allowed",
    ("messages", "too_short"): "at least one message is required",
    ("type", "literal_error"): "only text parts ({\"type\": \"text\", \"text\": \"...\"}) are supported: "
                               "this model reads text, not images, audio or files",
}
_KINDS = {"string_type": "a string", "list_type": "a list", "int_type": "an integer", "float_type": "a number",
          "bool_type": "true or false", "dict_type": "an object", "model_type": "an object",
          "model_attributes_type": "an object", "int_from_float": "an integer"}

_BOUNDS = {"less_than_equal": "le", "greater_than_equal": "ge", "less_than": "lt", "greater_than": "gt"}
_BOUND_WORDS = {"less_than_equal": "at most", "greater_than_equal": "at least", "less_than": "less than",
                "greater_than": "more than"}


def _field_path(loc: tuple) -> tuple:
    """``loc`` without pydantic's names for union members (``function-after[...]``, ``list[TextPart]``,
    ``str``): what is left names the request's own fields and list positions."""
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool")
                                                                    or p[:1].isupper())))


def describe_invalid(errors: list[dict]) -> tuple[str | None, str]:
    """``(param, message)`` for a request that failed validation, written for a person: ``param`` is the
    field (``"stop"``, ``"messages.0.content"``), the message says what the field allows.

    A value that fits no member of a union gets one error per member; the member that got furthest (a
    deeper position, or an error about the value rather than its type) says what went wrong, and when every
    member refused the type, the message lists what the field allows.
    """
    if not errors:
        return None, "invalid request"
    paths = [(_field_path(tuple(e.get("loc", ()))), e) for e in errors]
    base = paths[0][0]
    same = [(p, e) for p, e in paths if p[:len(base)] == base]  # the first field's errors, all its members
    path, error = max(same, key=lambda pe: (len(pe[0]), not pe[1]["type"].endswith("_type")))
    param = ".".join(str(p) for p in path) or None
    field = next((p for p in reversed(path) if isinstance(p, str)), "")
    kinds = [_KINDS.get(e["type"]) for p, e in same if p == path]
    if len(kinds) > 1 and all(kinds):  # every member of a union refused the value's type
        allowed = ALLOWED.get(field) or " or ".join(dict.fromkeys(k for k in kinds if k))
        message = f"must be {allowed}"
    elif (field, error["type"]) in SAYINGS and (field != "type" or "content" in path):
        message = SAYINGS[field, error["type"]]
    elif error["type"] in _KINDS:  # the field itself, or one item of it
        message = f"must be {ALLOWED[field] if path[-1:] == (field,) and field in ALLOWED else _KINDS[error['type']]}"
    elif error["type"] in _BOUNDS and _BOUNDS[error["type"]] in (error.get("ctx") or {}):
        message = f"must be {_BOUND_WORDS[error['type']]} {error['ctx'][_BOUNDS[error['type']]]}"
    else:
        message = error.get("msg", "invalid value").removeprefix("Value error, ")
    if error["type"] == "too_long" and "actual_length" in (error.get("ctx") or {}):
        message += f" (got {error['ctx']['actual_length']})"
    return param, f"{param}: {message}" if param else message


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


# -- websocket: corolab's own frames on /ws/chat -------------------------------------------------------

History = list[Annotated[list[Text], Field(min_length=2, max_length=2)]]


class WsRequest(SamplingFields):
    """One question on ``ws /ws/chat``: ChatGLM's ``{query, history: [[q, a], ...]}``, or OpenAI-style
    ``messages``. Sampling fields as in the HTTP request."""

    query: Text | None = None
    history: History = Field(default_factory=list)
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _query_or_messages(self) -> WsRequest:
        if (self.query is None) == (self.messages is None):
            raise ValueError("send either 'query' (with optional 'history') or 'messages'")
        return self

    def chat(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return chat_of(self.messages)
        return history_chat(self.history, self.query or "")


def history_chat(history: list[list[str]], query: str) -> list[dict[str, str]]:
    """ChatGLM's ``[[question, answer], ...]`` plus a new question, as chat messages."""
    turns: list[dict[str, str]] = []
    for question, answer in history:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns + [{"role": "user", "content": query}]


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


# -- websocket: ChatGLM-6B's websocket_api.py protocol on /ws ------------------------------------------

class GlmRequest(SamplingFields):
    """A frame of ChatGLM-6B's ``websocket_api.py``: ``{"query": ..., "history": [[q, a], ...]}``.
    The sampling fields are corolab's addition; ChatGLM's clients send none and get the defaults."""

    query: Text
    history: History = Field(default_factory=list)


class GlmFrame(BaseModel):
    """Sent while the reply grows: the whole ``response`` so far, and the history including this turn."""

    response: str
    history: list[list[str]]
    status: Literal[202] = 202


class GlmDone(BaseModel):
    """Sent once the reply is complete: ChatGLM's clients stop reading at ``status`` 200."""

    status: Literal[200] = 200


class GlmError(BaseModel):
    """corolab's addition: a frame that cannot be answered gets this, and the connection stays open."""

    status: int
    error: ErrorDetail
