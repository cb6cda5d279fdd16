"""What a request asks of the engine, as plain values: sampling settings and how a reply may end.

This module sits at the bottom of the package. The wire format (:mod:`corolab.serving.protocol`), the engines
(:mod:`corolab.serving.engine`) and the model backends (:mod:`corolab.serving.backends`) all import it, and it imports
none of them (only :mod:`corolab.serving.config`, beside it at the bottom, for the default reply length), so every
import arrow in the serving stack points down: server → protocol → engine → backends → params, config.

The context-window rule (prompt plus reply must fit the model's window) is decided here once, by
:func:`check_fits`, and refused with one exception type, :class:`LimitError`: at admission (through
:func:`reply_limit`) and in every engine's ``submit`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from corolab.serving.config import ServeConfig

FinishReason = Literal["stop", "length", "abort"]

#: The largest ``seed`` a request may carry: torch's generators take 64-bit unsigned seeds.
MAX_SEED = 2**64 - 1


class LimitError(ValueError):
    """A request's length limits cannot be met: the prompt leaves no room for the reply. ``param`` names the
    request field at fault, so the transport can say which one (a 400 either way, ``context_length_exceeded``)."""

    def __init__(self, message: str, param: str = "messages") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings. Each request in one batch keeps its own.

    ``max_tokens`` is final: the number of reply tokens this request may produce, already clamped to the
    context window by :func:`reply_limit`.
    """

    max_tokens: int = ServeConfig.max_tokens  # the server's default reply length, read from the config
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep going past end-of-sequence until max_tokens (benchmarks, like vLLM's)


def check_fits(prompt_tokens: int, reply_tokens: int, context_window: int) -> None:
    """The context-window rule: a prompt of ``prompt_tokens`` plus a reply of ``reply_tokens`` must fit the
    model's ``context_window``. Raises :class:`LimitError` when it does not."""
    if prompt_tokens + reply_tokens > context_window:
        reply = f"{reply_tokens} token" + ("" if reply_tokens == 1 else "s")
        raise LimitError(f"the prompt has {prompt_tokens} tokens; with a reply of {reply} it exceeds this "
                         f"model's context window of {context_window} tokens")


def reply_limit(prompt_tokens: int, context_window: int, *, max_tokens: int | None = None,
                max_length: int | None = None, default: int) -> int:
    """How many tokens a reply may have: the one place where every length limit meets.

    - ``max_tokens`` (OpenAI's, and ``max_completion_tokens``) counts the reply alone.
    - ``max_length`` (ChatGLM's and Hugging Face ``generate``'s) counts the prompt plus the reply.
    - With neither, ``default`` reply tokens (the server's ``--max-tokens``). With both, the smaller limit wins.
    - Whatever was asked, prompt plus reply must fit the model's context window.

    Raises :class:`LimitError` when the prompt leaves no room for even one reply token.
    """
    check_fits(prompt_tokens, 1, context_window)
    limits = [context_window - prompt_tokens]
    if max_length is not None:
        if prompt_tokens >= max_length:
            raise LimitError(
                f"max_length={max_length} counts the prompt plus the reply (as in ChatGLM and Hugging Face "
                f"generate), and the prompt alone has {prompt_tokens} tokens; raise max_length, or use "
                "max_tokens to limit the reply alone", param="max_length")
        limits.append(max_length - prompt_tokens)
    if max_tokens is not None:
        limits.append(max_tokens)
    elif max_length is None:
        limits.append(default)
    return max(1, min(limits))


__all__ = ["FinishReason", "LimitError", "MAX_SEED", "SamplingParams", "check_fits", "reply_limit"]
