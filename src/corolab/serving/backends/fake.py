"""A deterministic, instant backend: for tests, for teaching, and for measuring serving overhead.

Its tokenizer is byte-level UTF-8 (token id = byte value, 256 = end of sequence), so a Chinese character
takes three tokens and the detokeniser must never emit half of one. Its "model" answers
``"You said: <last user message>"`` token by token, then ends, unless ``max_tokens`` cuts it short. With
``temperature > 0`` and a ``seed``, it picks one of a few phrasings with that seed, so sampling settings
visibly matter and stay reproducible. ``step_delay`` makes each step cost time like a real model whose
step time does not depend on the batch size (a GPU, roughly), which is what makes batching pay.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Sequence

from corolab.serving.backends.base import Backend, BackendInfo, Batch, Outcome
from corolab.serving.params import SamplingParams

EOS = 256
PHRASINGS = ("You said: {}", "I heard: {}", "Echo: {}")


class FakeBatch(Batch):
    def __init__(self, backend: FakeBackend) -> None:
        super().__init__()
        self._backend = backend
        # key -> (reply token ids, whether to repeat them forever, next position)
        self._rows: dict[int, tuple[list[int], bool, int]] = {}

    def add_many(self, items: Sequence[tuple[int, Sequence[int], SamplingParams]]) -> dict[int, Outcome]:
        """One pause for the whole group, as a real backend prefills a padded batch in one forward pass."""
        self._backend._pause()
        self._backend.prefilled.extend(key for key, _, _ in items)
        return {key: self._admit(key, prompt, params) for key, prompt, params in items}

    def _admit(self, key: int, prompt: Sequence[int], params: SamplingParams) -> int:
        reply = self._backend.reply_for(prompt, params)
        if params.ignore_eos:  # say it again and again (by position, never materialised), to max_tokens
            reply = reply[:-1] + list(b" ")
        self._rows[key] = (reply, params.ignore_eos, 1)
        return reply[0]

    def step(self) -> dict[int, int]:
        self._backend._pause()
        out = {}
        for key, (reply, repeat, pos) in self._rows.items():
            if repeat:
                out[key] = reply[pos % len(reply)]
            else:
                out[key] = reply[pos] if pos < len(reply) else EOS
            self._rows[key] = (reply, repeat, pos + 1)
        return out

    def remove(self, key: int) -> None:
        self._rows.pop(key, None)
        self._partial.pop(key, None)

    def __len__(self) -> int:
        return len(self._rows)


class FakeBackend(Backend):
    def __init__(self, step_delay: float = 0.0, context_window: int = 4096, model_id: str = "fake",
                 kv_bytes_per_token: int = 0) -> None:
        self.step_delay = step_delay
        # bytes, no tensors: a CPU, and float32 to name something. It keeps no KV cache; a test that wants the
        # scheduler to count one says how big a token's would be.
        self.info = BackendInfo(model_id=model_id, context_window=context_window, backend="fake", device="cpu",
                                dtype="float32", kv_bytes_per_token=kv_bytes_per_token)
        # the keys of the latest prompts prefilled, in order (bounded: a soak run must not see it grow)
        self.prefilled: deque[int] = deque(maxlen=4096)

    def load(self) -> None:
        """Nothing to load: the fake model is ready at once."""

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset({EOS})

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def new_batch(self) -> Batch:
        return FakeBatch(self)

    def reply_for(self, prompt: Sequence[int], params: SamplingParams) -> list[int]:
        """The whole reply as token ids, ending with EOS: a pure function of the prompt and sampling."""
        text = self.decode(prompt)
        last_user = text.rsplit("<user>", 1)[-1].split("\n", 1)[0] if "<user>" in text else ""
        phrasing = PHRASINGS[0]
        if params.temperature > 0 and params.seed is not None:
            phrasing = random.Random(params.seed).choice(PHRASINGS)
        return list(phrasing.format(last_user).encode("utf-8")) + [EOS]

    def _pause(self) -> None:
        if self.step_delay:
            time.sleep(self.step_delay)
