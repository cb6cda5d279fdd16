"""The backend contract: a tokenizer and a model that can run many sequences one decode step at a time.

Engines (``corolab.engine``) own scheduling; backends own tensors. The split is the :class:`Batch`: an engine
adds a sequence (the backend runs its prefill and samples its first token), calls :meth:`Batch.step` to
advance every sequence by one token, and removes sequences that finished or whose client left. The naive
and threads engines use a batch of one per request; the batched engine shares one batch between all.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from corolab.engine.base import SamplingParams


@dataclass(frozen=True)
class BackendInfo:
    model_id: str
    context_window: int
    backend: str          # "fake" | "hf"
    device: str = "cpu"
    dtype: str = "float32"


class Batch(abc.ABC):
    """Sequences decoding together. Keys are the engine's request ids. Not thread-safe: one thread drives it."""

    @abc.abstractmethod
    def add(self, key: int, prompt: Sequence[int], params: SamplingParams) -> int:
        """Run the prompt through the model, join the batch, and return the first sampled token."""

    def add_many(self, items: Sequence[tuple[int, Sequence[int], SamplingParams]]) -> dict[int, int]:
        """Add several sequences at once; return each first token by key.

        Backends whose prefill is cheaper in one go (one padded forward pass instead of many small
        ones) override this; the batched engine admits everything that arrived since its last step here.
        """
        return {key: self.add(key, prompt, params) for key, prompt, params in items}

    @abc.abstractmethod
    def step(self) -> dict[int, int]:
        """Feed every sequence its last token; return the next token of each, by key."""

    @abc.abstractmethod
    def remove(self, key: int) -> None:
        """Drop a sequence and free what it held."""

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

    @abc.abstractmethod
    def new_batch(self) -> Batch: ...
