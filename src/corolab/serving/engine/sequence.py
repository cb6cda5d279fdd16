"""One request's life inside any engine: tokens in, safe deltas out, and when to finish.

All three engines share this, so they differ only in *when* model steps run, which is the lesson.
"""

from __future__ import annotations

from corolab.serving.backends.base import Backend
from corolab.serving.engine.base import Delta
from corolab.serving.engine.detok import IncrementalDetokenizer, StopFilter
from corolab.serving.params import FinishReason, SamplingParams


class RequestSequence:
    """Feed it sampled tokens; it returns the deltas to stream and knows when the request is done.

    ``params.max_tokens`` is final (the transport clamped it to the context window at admission).
    """

    def __init__(self, backend: Backend, prompt_tokens: int, params: SamplingParams) -> None:
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.max_tokens = params.max_tokens
        self.eos = frozenset() if params.ignore_eos else backend.eos_token_ids
        self.detok = backend.new_detokenizer() or IncrementalDetokenizer(backend.decode)
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

    def _finish(self, reason: FinishReason, text: str) -> list[Delta]:
        self.finished = True
        out = [self._delta(text)] if text else []
        out.append(Delta("", reason, self.prompt_tokens, self.completion_tokens))
        return out

    def _delta(self, text: str) -> Delta:
        return Delta(text, None, self.prompt_tokens, self.completion_tokens)
