"""The timeline helper the chapters draw with: spans, overlap and concurrency answers, and a figure."""

import threading

import pytest

from corolab.teach.timeline import Timeline


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_spans_overlap_and_concurrency():
    clock = FakeClock()
    tl = Timeline(clock)
    tl.add("a", 0.0, 2.0)
    tl.add("b", 1.0, 3.0)
    tl.add("c", 3.0, 4.0)            # touches b's end: not an overlap
    tl.add("c", 0.0, 5.0, "waiting")
    assert tl.rows == ["a", "b", "c"]
    assert tl.overlaps("a", "b")
    assert not tl.overlaps("b", "c")
    assert tl.overlaps("b", "c", state="running") is False
    assert tl.max_concurrent() == 2
    assert tl.max_concurrent("waiting") == 1
    assert tl.busy("c") == 1.0


def test_span_context_manager_uses_the_clock():
    clock = FakeClock()
    tl = Timeline(clock)
    clock.t = 1.0
    with tl.span("x", "blocked"):
        clock.t = 1.5
    (span,) = tl.spans
    assert (span.start, span.end, span.state) == (1.0, 1.5, "blocked")


def test_bad_spans_are_refused():
    tl = Timeline()
    with pytest.raises(ValueError):
        tl.add("x", 0, 1, "sleeping")
    with pytest.raises(ValueError):
        tl.add("x", 2, 1)


def test_threads_append_and_plot():
    tl = Timeline()
    gate = threading.Barrier(3)

    def work(name: str) -> None:
        with tl.span(name):
            gate.wait()          # all three are inside their span at once

    threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tl.max_concurrent() == 3
    tl.mark("t0", "done")
    fig = tl.plot(title="three threads")
    assert sorted(t.get_text() for t in fig.axes[0].get_yticklabels()) == ["t0", "t1", "t2"]
