"""Incremental detokenisation: never half a character, never text that a stop sequence later removes."""

from __future__ import annotations

import random

import pytest

from corolab.serving.backends.fake import FakeBackend
from corolab.serving.engine.detok import IncrementalDetokenizer, StopFilter

# The kind of reply the seed's ChatGLM server streamed: CJK, full-width punctuation and an emoji (4 bytes).
SEED_REPLY = "你好👋！我是人工智能助手，很高兴见到你，欢迎问我任何问题。"


def stream(text: str) -> list[str]:
    """Feed ``text`` as UTF-8 bytes (the fake tokenizer: one byte per token); return the emitted pieces."""
    detok = IncrementalDetokenizer(FakeBackend().decode)
    return [detok.push(b) for b in text.encode()]


def test_never_emits_half_a_character():
    pieces = stream(SEED_REPLY)
    assert "".join(pieces) == SEED_REPLY
    assert all("\ufffd" not in p for p in pieces)
    emitted = [p for p in pieces if p]
    assert emitted == list(SEED_REPLY)  # each character comes out whole, once its last byte arrives
    assert pieces[:3] == ["", "", "你"]  # 3 bytes: nothing, nothing, then the character


def test_window_decoding_keeps_spaces_that_single_token_decoding_loses():
    """SentencePiece-style tokenizers drop the leading space when a piece is decoded on its own."""
    pieces = {1: "▁Hello", 2: "▁world", 3: ",", 4: "▁how", 5: "▁are", 6: "▁you"}

    def decode(ids):
        return "".join(pieces[i] for i in ids).replace("▁", " ").lstrip(" ")

    assert decode([2]) == "world"  # the trap: decoded alone, " world" loses its space
    detok = IncrementalDetokenizer(decode)
    assert "".join(detok.push(i) for i in (1, 2, 3, 4, 5, 6)) == "Hello world, how are you"


def test_stop_filter_holds_back_a_possible_stop_then_releases_it():
    f = StopFilter(["\nUser:"])
    assert f.push("Hi") == "Hi"
    assert f.push("\nUs") == ""         # could be the start of "\nUser:"
    assert f.push("ually") == "\nUsually"  # it was not: released in order
    assert f.push("\nUser") == ""
    assert f.push(": more") == ""       # the stop: nothing from it on is ever emitted
    assert f.stopped and f.flush() == ""


def test_stop_filter_flushes_held_text_when_the_stream_ends():
    f = StopFilter(["END"])
    assert f.push("the EN") == "the "
    assert f.flush() == "EN"


def test_earliest_of_several_stops_wins_and_empty_stops_are_ignored():
    f = StopFilter(["", "world", "o w"])
    assert f.push("hello world") == "hell"
    assert f.stopped


def test_chinese_stop_sequence_split_across_byte_tokens():
    detok, f = IncrementalDetokenizer(FakeBackend().decode), StopFilter(["世界"])
    out = "".join(f.push(detok.push(b)) for b in "你好，世界！".encode())
    assert out == "你好，" and f.stopped


@pytest.mark.parametrize("seed", range(50))
def test_emitted_text_is_always_a_prefix_of_the_final_answer(seed):
    """Random texts, random stops, random token boundaries: the stream never has to take anything back."""
    rng = random.Random(seed)
    alphabet = "ab \n世界👋"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(0, 2))]
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[: min(hits)] if hits else text
    data, chunks = text.encode(), []
    while data:  # tokens of 1-4 bytes, not aligned to characters (as byte-level BPE does)
        n = rng.randint(1, 4)
        chunks, data = chunks + [data[:n]], data[n:]

    def decode(ids):
        return b"".join(chunks[i] for i in ids).decode("utf-8", errors="replace")

    detok, f = IncrementalDetokenizer(decode), StopFilter(stops)
    emitted = ""
    for token in range(len(chunks)):
        emitted += f.push(detok.push(token))
        assert expected.startswith(emitted) and "\ufffd" not in emitted
        if f.stopped:
            break
    emitted += f.flush()
    assert emitted == expected
