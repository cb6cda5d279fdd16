"""Tests for corolab.teach.classic: priming, fan-out and close propagation in push pipelines."""

from __future__ import annotations

import inspect

import pytest

from corolab.teach.classic import broadcast, coroutine, push, sink_list


def test_unprimed_generator_rejects_send() -> None:
    def echo():
        while True:
            yield (yield)

    gen = echo()
    with pytest.raises(TypeError, match="just-started generator"):
        gen.send(1)


def test_coroutine_decorator_primes_and_keeps_metadata() -> None:
    @coroutine
    def running_total():
        """Doc kept by functools.wraps."""
        total = 0
        while True:
            total += yield total

    acc = running_total()
    assert inspect.getgeneratorstate(acc) == inspect.GEN_SUSPENDED
    assert [acc.send(x) for x in (3, 4, 5)] == [3, 7, 12]
    assert running_total.__name__ == "running_total"
    assert running_total.__doc__ == "Doc kept by functools.wraps."


def test_sink_list_collects_in_order() -> None:
    out: list[int] = []
    sink = sink_list(out)
    for x in (3, 1, 2):
        sink.send(x)
    assert out == [3, 1, 2]


def test_broadcast_sends_each_item_to_every_target_in_order() -> None:
    events: list[tuple[str, int]] = []

    @coroutine
    def tagged(name: str):
        while True:
            events.append((name, (yield)))

    fan = broadcast(tagged("a"), tagged("b"))
    fan.send(1)
    fan.send(2)
    # each item reaches both sinks before the next item enters: a push pipeline is strictly ordered
    assert events == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_closing_broadcast_closes_its_targets() -> None:
    closed: list[str] = []

    @coroutine
    def watcher(name: str):
        try:
            while True:
                yield
        finally:
            closed.append(name)

    targets = [watcher("x"), watcher("y")]
    fan = broadcast(*targets)
    fan.close()
    assert closed == ["x", "y"]
    assert all(inspect.getgeneratorstate(t) == inspect.GEN_CLOSED for t in targets)


def test_push_sends_everything_then_closes() -> None:
    out_a: list[int] = []
    out_b: list[int] = []
    a, b = sink_list(out_a), sink_list(out_b)
    push(range(4), broadcast(a, b))
    assert out_a == out_b == [0, 1, 2, 3]
    assert inspect.getgeneratorstate(a) == inspect.GEN_CLOSED


def test_push_can_leave_target_open() -> None:
    out: list[int] = []
    sink = sink_list(out)
    push([1], sink, close=False)
    push([2], sink, close=False)
    assert out == [1, 2]
    assert inspect.getgeneratorstate(sink) == inspect.GEN_SUSPENDED


def test_broadcast_closes_every_target_even_if_one_fails_to_close() -> None:
    closed: list[str] = []

    @coroutine
    def fragile():
        try:
            yield
        finally:
            raise OSError("disk full")

    @coroutine
    def watcher():
        try:
            while True:
                yield
        finally:
            closed.append("watcher")

    fan = broadcast(fragile(), watcher())
    with pytest.raises(OSError, match="disk full"):
        fan.close()
    assert closed == ["watcher"]


def test_push_closes_the_pipeline_even_when_a_stage_fails() -> None:
    closed: list[str] = []

    @coroutine
    def picky():
        try:
            while True:
                if (yield) < 0:
                    raise ValueError("negative")
        finally:
            closed.append("picky")

    out: list[int] = []
    keep = sink_list(out)
    fan = broadcast(keep, picky())
    with pytest.raises(ValueError, match="negative"):
        push([1, 2, -3, 4], fan)
    assert out == [1, 2, -3]  # the sink before the failing stage saw -3; nothing after it was sent
    assert closed == ["picky"]
    assert inspect.getgeneratorstate(keep) == inspect.GEN_CLOSED
