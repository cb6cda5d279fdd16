"""Admission: from a validated request to an engine handle, or a refusal, before any reply byte is sent.

The same steps for an HTTP body and a websocket frame, in order of cost:

1. a cheap length check on the raw text, so a huge prompt is refused before anyone tokenizes it;
2. chat templating and tokenizing, off the event loop (``engine.tokenize``);
3. the request's limits mapped to the engine's settings (:meth:`SamplingFields.to_sampling_params`);
4. ``engine.submit``, which refuses at once (queue full, not ready) or returns the handle.
"""

from __future__ import annotations

from corolab.engine.base import EngineError
from corolab.engine.handle import RequestHandle
from corolab.params import LimitError
from corolab.protocol import SamplingFields
from corolab.server.errors import APIError, from_engine_error
from corolab.server.state import ServerState

#: No tokenizer packs more characters than this into one token on ordinary text, so a prompt with more
#: than ``context_window * MAX_CHARS_PER_TOKEN`` characters cannot fit and is refused untokenized.
MAX_CHARS_PER_TOKEN = 32


async def admit(state: ServerState, messages: list[dict[str, str]], fields: SamplingFields) -> RequestHandle:
    """Admit one request or raise :class:`APIError` (400, 429, 503)."""
    engine = state.engine
    try:
        engine.check_ready()  # before tokenizing: a refusal should cost nothing
    except EngineError as exc:
        raise from_engine_error(exc) from None
    window = engine.info.context_window
    chars = sum(len(m["content"]) for m in messages)
    if chars > window * MAX_CHARS_PER_TOKEN:
        raise APIError(400, f"the prompt has {chars} characters, far more than this model's context window of "
                       f"{window} tokens can hold", param="messages", code="context_length_exceeded")
    prompt = await engine.tokenize(messages)
    try:
        params = fields.to_sampling_params(len(prompt), window, state.config.max_tokens)
    except LimitError as exc:
        raise APIError(400, str(exc), param=exc.param, code="context_length_exceeded") from None
    try:
        return engine.submit(prompt, params)
    except EngineError as exc:
        raise from_engine_error(exc) from None

