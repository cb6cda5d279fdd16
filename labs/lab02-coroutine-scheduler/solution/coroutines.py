"""Lab 2 instructor solution: coroutine pipelines and a round-robin scheduler."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import Any


def coroutine(func: Callable[..., Generator]) -> Callable[..., Generator]:
    @functools.wraps(func)
    def primed(*args: Any, **kwargs: Any) -> Generator:
        gen = func(*args, **kwargs)
        next(gen)
        return gen

    return primed


@coroutine
def where(predicate: Callable[[Any], bool], target: Generator) -> Generator:
    try:
        while True:
            item = yield
            if predicate(item):
                target.send(item)
    finally:
        target.close()


@coroutine
def collect(out: list) -> Generator:
    while True:
        out.append((yield))


@coroutine
def broadcast(targets: Iterable[Generator]) -> Generator:
    targets = list(targets)
    try:
        while True:
            item = yield
            for target in targets:
                target.send(item)
    finally:
        for target in targets:
            target.close()


class Scheduler:
    def __init__(self) -> None:
        self.trace: list[tuple[str, Any]] = []
        self._ready: deque[tuple[str, Generator]] = deque()

    def spawn(self, name: str, gen: Generator) -> None:
        self._ready.append((name, gen))

    def run(self, max_steps: int = 10_000) -> dict[str, Any]:
        results: dict[str, Any] = {}
        steps = 0
        while self._ready and steps < max_steps:
            name, gen = self._ready.popleft()
            steps += 1
            try:
                value = next(gen)
            except StopIteration as stop:
                results[name] = stop.value
                continue
            except Exception as error:
                results[name] = error
                continue
            self.trace.append((name, value))
            self._ready.append((name, gen))
        return results
