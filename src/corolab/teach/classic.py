"""Classic (generator-based) coroutines: the priming decorator and push-pipeline helpers.

Part II builds these in its chapters, then imports them from here so that later chapters use one copy
(Lab 2 asks students to write their own). A *classic coroutine* is a generator that receives values
through ``send()``; it must first run to its first ``yield`` before it can receive anything, which is
what :func:`coroutine` automates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Iterable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
Y = TypeVar("Y")
S = TypeVar("S")
R = TypeVar("R")

#: A coroutine that only consumes: it yields nothing useful and is fed with ``send()``.
Sink = Generator[None, Any, Any]


def coroutine(func: Callable[P, Generator[Y, S, R]]) -> Callable[P, Generator[Y, S, R]]:
    """Decorate a generator function so that calling it returns a coroutine already primed.

    Why: ``send(x)`` to a just-created generator raises ``TypeError``, because there is no paused
    ``yield`` to receive ``x``. Advancing it once with ``next()`` parks it at its first ``yield``.
    Forgetting that step is the classic-coroutine bug; the decorator makes it impossible.
    """

    @functools.wraps(func)
    def primed(*args: P.args, **kwargs: P.kwargs) -> Generator[Y, S, R]:
        gen = func(*args, **kwargs)
        next(gen)
        return gen

    return primed


@coroutine
def broadcast(*targets: Sink) -> Sink:
    """Send every received item to each target, in order; closing this closes them all, in order.

    Why: a push pipeline is a graph, not only a chain. Fan-out lets one pass over the data feed several
    consumers, and forwarding ``close()`` lets the source end the whole graph with one call. The targets
    are closed one by one even if closing one of them fails, so no sink misses its final flush.
    """
    try:
        while True:
            item = yield
            for target in targets:
                target.send(item)
    finally:
        _close_all(targets)


def _close_all(targets: tuple[Sink, ...]) -> None:
    """Close each target; if one fails, still close the rest, then raise the first failure."""
    first_error: Exception | None = None
    for target in targets:
        try:
            target.close()
        except Exception as error:
            first_error = first_error or error
    if first_error is not None:
        raise first_error


@coroutine
def sink_list(out: list[Any]) -> Sink:
    """Append every received item to ``out``: the simplest end of a pipeline, handy in tests."""
    while True:
        out.append((yield))


def push(items: Iterable[Any], target: Sink, *, close: bool = True) -> None:
    """Drive a push pipeline: send each item into ``target``, then close it (unless ``close=False``).

    Why: in a push pipeline the source is the only loop. Closing at the end lets every stage run its
    ``finally`` (flush totals, close files) exactly once, when the data has run out.
    """
    try:
        for item in items:
            target.send(item)
    finally:
        if close:
            target.close()
