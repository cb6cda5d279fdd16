"""Admission: from a validated request to an engine handle, or a refusal, before any reply byte is sent.

The same steps for an HTTP body and a websocket frame, in order of cost:

1. a cheap length check, so a prompt too long for the model is refused before anyone tokenizes it: every
   message costs at least the chat template's tokens for a message (:func:`message_tokens`, measured
   once at start-up, never less than 1), and no token holds more than :data:`MAX_CHARS_PER_TOKEN`
   characters. 31,000 empty messages are refused here, where templating and tokenizing them took 0.5 s;
   what passes costs at most about a context window's worth of tokenizing;
2. chat templating and tokenizing, off the event loop (``engine.tokenize``);
3. the request's limits mapped to the engine's settings (:meth:`SamplingFields.to_sampling_params`);
4. ``engine.submit``, which refuses at once (queue full, not ready, shutting down) or returns the handle. A
   full queue is a 429 whose ``Retry-After`` is the time the queue needs to drain at the recent step rate
   (:meth:`Metrics.drain_seconds <corolab.serving.server.metrics.Metrics.drain_seconds>`).

An admitted reply is tracked by the server's :class:`~corolab.serving.server.drain.Drain` until its transport
releases it, so a shutdown knows which replies are still running.
"""

from __future__ import annotations

import logging

from corolab.serving.engine.base import Engine, EngineError, QueueFullError
from corolab.serving.engine.handle import RequestHandle
from corolab.serving.params import LimitError
from corolab.serving.protocol import SamplingFields
from corolab.serving.server.errors import APIError, from_engine_error
from corolab.serving.server.state import ServerState

#: No tokenizer packs more characters than this into one token on ordinary text, so a prompt with more
#: than ``context_window * MAX_CHARS_PER_TOKEN`` characters cannot fit and is refused untokenized.
MAX_CHARS_PER_TOKEN = 32

log = logging.getLogger("corolab.serving.server")


async def message_tokens(engine: Engine) -> int:
    """The tokens the chat template adds for each message, at least 1: measured on empty messages (a
    user message, then a user-assistant-user conversation), through the engine's own ``tokenize``. A
    template that refuses empty messages leaves the floor of 1."""
    empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}, {"role": "user", "content": ""}]
    try:
        one, three = await engine.tokenize(empty[:1]), await engine.tokenize(empty)
    except Exception:  # noqa: BLE001 - any template error: the check falls back to one token a message
        log.warning("could not measure the chat template's tokens per message; counting 1", exc_info=True)
        return 1
    return max(1, (len(three) - len(one)) // 2)


def fewest_tokens(messages: list[dict[str, str]], per_message: int) -> int:
    """A lower bound on the prompt's tokens, from its messages and characters alone."""
    return len(messages) * per_message + sum(len(m["content"]) for m in messages) // MAX_CHARS_PER_TOKEN


async def admit(state: ServerState, messages: list[dict[str, str]], fields: SamplingFields) -> RequestHandle:
    """Admit one request or raise :class:`APIError` (400, 429, 503)."""
    engine = state.engine
    try:
        engine.check_ready()  # before tokenizing: a refusal should cost nothing
    except EngineError as exc:
        raise from_engine_error(exc) from None
    window = engine.info.context_window
    if (fewest := fewest_tokens(messages, state.message_tokens)) >= window:
        chars = sum(len(m["content"]) for m in messages)
        raise APIError(400, f"the prompt ({len(messages)} messages, {chars} characters) has at least {fewest} "
                       f"tokens; this model's context window is {window} tokens", param="messages",
                       code="context_length_exceeded")
    prompt = await engine.tokenize(messages)
    try:
        params = fields.to_sampling_params(len(prompt), window, state.config.max_tokens)
    except LimitError as exc:
        raise from_engine_error(exc) from None
    try:
        handle = engine.submit(prompt, params)
    except QueueFullError as exc:  # when to come back: when the queue has drained, at the recent step rate
        drain = state.metrics.drain_seconds(engine.stats(), state.config.max_tokens)
        raise from_engine_error(QueueFullError(str(exc), retry_after=max(exc.retry_after, drain))) from None
    except (EngineError, LimitError) as exc:
        raise from_engine_error(exc) from None
    state.drain.track(handle)  # until the transport releases it: a shutdown waits for this reply
    return handle

