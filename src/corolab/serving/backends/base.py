"""The backend contract: a tokenizer and a model that can run many sequences one decode step at a time.

Engines (``corolab.serving.engine``) own scheduling; backends own tensors. The split is the :class:`Batch`: an engine
prefills a sequence (the backend runs the prompt through the model, in one piece or in chunks over several
steps, and samples its first token), calls :meth:`Batch.step` to advance every sequence by one token, and
removes sequences that finished or whose client left. The naive and threads engines use a batch of one per
request; the batched engine shares one batch between all.

This module imports nothing above it: the sampling settings come from :mod:`corolab.serving.params`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from corolab.serving.params import SamplingParams

#: A prefill's outcome for one sequence: its first token, or why this sequence (and only it) failed.
Outcome = int | BaseException


@dataclass(frozen=True)
class BackendInfo:
    model_id: str
    context_window: int
    backend: str          # "fake" | "hf"
    device: str           # where it runs, once loaded: "cpu", "cuda", "mps" (a fact, not the --device setting)
    dtype: str            # the float type it computes in, once loaded
    quantization: str = "none"  # "none" | "int8" (corolab.serving.backends.cpu.quantize)
    kv_bytes_per_token: int = 0  # one token's keys and values over all layers; 0: the model keeps none (fake)


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt tokens ``prompt[start:end]`` of sequence ``key`` to run through the model this step."""

    key: int
    prompt: Sequence[int]
    start: int
    end: int
    params: SamplingParams

    @property
    def last(self) -> bool:
        """Whether this chunk ends the prompt: then the sequence samples its first token and joins."""
        return self.end >= len(self.prompt)


class Detokenizer(Protocol):
    """Turns one token at a time into text that is safe to stream (maybe empty, never half a character)."""

    def push(self, token: int) -> str: ...


class Batch(abc.ABC):
    """Sequences decoding together. Keys are the engine's request ids. Not thread-safe: one thread drives it."""

    def __init__(self) -> None:
        self._partial: dict[int, int] = {}  # key -> prompt tokens received so far, for the default prefill

    @abc.abstractmethod
    def add_many(self, items: Sequence[tuple[int, Sequence[int], SamplingParams]]) -> dict[int, Outcome]:
        """Prefill whole prompts (one padded forward pass where the backend can) and join the batch.

        Returns each sequence's first token, or the exception that failed that sequence alone (a seed its
        sampler refuses, say): one bad request never fails the others prefilled with it.
        """

    def add(self, key: int, prompt: Sequence[int], params: SamplingParams) -> int:
        """One whole prompt: the first token, or the sequence's failure raised."""
        outcome = self.add_many([(key, prompt, params)])[key]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def prefill(self, chunks: Sequence[PrefillChunk]) -> dict[int, Outcome]:
        """Run this step's prompt chunks. Returns outcomes for the sequences whose prompt is now complete.

        The default is correct for any backend but does not spread the work: it waits for a prompt's last
        chunk and prefills the whole prompt then. Backends that can extend a sequence's cache chunk by
        chunk (Hugging Face models) override it, so a long prompt costs a little in each of several steps.
        """
        whole = []
        for chunk in chunks:
            self._partial[chunk.key] = chunk.end
            if chunk.last:
                del self._partial[chunk.key]
                whole.append((chunk.key, chunk.prompt, chunk.params))
        return self.add_many(whole) if whole else {}

    @abc.abstractmethod
    def step(self) -> dict[int, int]:
        """Feed every joined sequence its last token; return the next token of each, by key."""

    @abc.abstractmethod
    def remove(self, key: int) -> None:
        """Drop a sequence (joined or still prefilling) and free what it held. Unknown keys are ignored."""

    @abc.abstractmethod
    def __len__(self) -> int: ...


class Backend(abc.ABC):
    """A model plus its tokenizer. ``load()`` is slow and blocking: engines call it off the event loop."""

    info: BackendInfo

    @abc.abstractmethod
    def load(self) -> None: ...

    @property
    @abc.abstractmethod
    def eos_token_ids(self) -> frozenset[int]: ...

    @abc.abstractmethod
    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Apply the model's chat template and tokenize, ready for the assistant's reply."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Token ids to text. Incomplete UTF-8 at the end shows as U+FFFD; the detokeniser relies on that."""

    def new_detokenizer(self) -> Detokenizer | None:
        """A streaming detokenizer of the tokenizer's own, if it has one; ``None``: the engine uses its
        window-based :class:`~corolab.serving.engine.detok.IncrementalDetokenizer` over :meth:`decode`."""
        return None

    def thread_tuner(self):  # -> corolab.serving.backends.cpu.torch_threads.ThreadTuner | None
        """For an engine whose one worker thread runs every step: something that picks the CPU thread count
        from the steps' times (:class:`corolab.serving.backends.cpu.torch_threads.ThreadTuner`), or ``None`` when the number
        is fixed or there is nothing to pick."""
        return None

    @property
    def prefix_hits(self) -> int:
        """Prompt tokens whose prefill was skipped thanks to a cached shared prefix (for /metrics)."""
        return 0

    @abc.abstractmethod
    def new_batch(self) -> Batch: ...
