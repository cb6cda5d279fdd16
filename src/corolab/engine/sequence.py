"""One request's life inside any engine: tokens in, safe deltas out, and when to finish.

All three engines share this, so they differ only in *when* model steps run, which is the lesson.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

from corolab.backends.base import Backend
from corolab.engine.base import Delta, PromptTooLongError, SamplingParams
from corolab.engine.detok import IncrementalDetokenizer, StopFilter


def encode_checked(backend: Backend, messages: Seq[dict[str, str]], params: SamplingParams) -> list[int]:
    """Tokenize the chat; refuse prompts that leave no room in the context window."""
    prompt = backend.encode_chat(messages)
    window = backend.info.context_window
    if len(prompt) >= window:
        raise PromptTooLongError(
            f"the prompt has {len(prompt)} tokens; this model's context window is {window} tokens"
        )
    return prompt


class RequestSequence:
    """Feed it sampled tokens; it returns the deltas to stream and knows when the request is done."""

    def __init__(self, backend: Backend, prompt: list[int], params: SamplingParams) -> None:
        self.prompt_tokens = len(prompt)
        self.params = params
        self.max_tokens = max(1, min(params.max_tokens, backend.info.context_window - len(prompt)))
        self.eos = frozenset() if params.ignore_eos else backend.eos_token_ids
        self.detok = IncrementalDetokenizer(backend.decode)
        self.stops = StopFilter(params.stop)
        self.completion_tokens = 0
        self.finished = False

    def push(self, token: int) -> list[Delta]:
        """Account for one sampled token; return zero, one or two deltas (text, then the finish)."""
        if self.finished:
            return []
        if token in self.eos:
            return self._finish("stop", self.stops.flush())
        self.completion_tokens += 1
        text = self.stops.push(self.detok.push(token))
        if self.stops.stopped:
            return self._finish("stop", text)
        if self.completion_tokens >= self.max_tokens:
            return self._finish("length", text + self.stops.flush())
        return [self._delta(text)] if text else []

    def abort(self) -> None:
        self.finished = True

    def _finish(self, reason: str, text: str) -> list[Delta]:
        self.finished = True
        out = [self._delta(text)] if text else []
        out.append(Delta("", reason, self.prompt_tokens, self.completion_tokens))  # type: ignore[arg-type]
        return out

    def _delta(self, text: str) -> Delta:
        return Delta(text, None, self.prompt_tokens, self.completion_tokens)
