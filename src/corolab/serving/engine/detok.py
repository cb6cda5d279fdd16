"""Turn a growing list of token ids into text that is safe to stream.

Two traps. A token may end in the middle of a UTF-8 character (byte-level BPE splits Chinese characters
across tokens): decoding then shows U+FFFD, and streaming it would put garbage on the client's screen
forever. And a stop sequence may arrive in pieces: if ``stop=["\\nUser:"]`` and the model has produced
``"\\nUs"``, that text must wait, because the next token may complete the stop string and remove it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Decode only a short window of recent tokens per step, so each step costs O(1), not O(length).

    ``prefix`` marks tokens whose text is already final; decoding ``ids[prefix:]`` and subtracting the
    text of ``ids[prefix:read]`` gives the new text, which keeps tokenizers that merge spaces across token
    boundaries correct.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        """Add a token; return the text it completes (maybe empty, never a broken character)."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if after.endswith(REPLACEMENT) or len(after) <= len(before):
            return ""  # an incomplete character: wait for the next token
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]


class StopFilter:
    """Hold back text that could be the start of a stop sequence; cut the stream at the first match."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Return the text that can be sent now; sets ``stopped`` when a stop sequence appears."""
        if self.stopped:
            return ""
        if not self.stop:
            return text
        held = self._held + text
        cut = min((i for i in (held.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return held[:cut]
        keep = self._longest_partial(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """The stream ended without a stop sequence: what was held back is real text after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial(self, text: str) -> int:
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
