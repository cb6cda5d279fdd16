"""Lab 2: coroutine pipelines and a round-robin scheduler. Run `corolab lab check 2` to see your score."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any


def coroutine(func: Callable[..., Generator]) -> Callable[..., Generator]:
    """Decorator: calling ``func`` returns its generator already advanced to the first ``yield``.

    Keep the decorated function's ``__name__`` and ``__doc__`` (functools.wraps).
    """
    raise NotImplementedError


def where(predicate: Callable[[Any], bool], target: Generator) -> Generator:
    """A primed coroutine that sends on to ``target`` only the items ``predicate`` accepts.

    When it is closed, it closes ``target``. Decorate it with your ``coroutine``.
    """
    raise NotImplementedError


def collect(out: list) -> Generator:
    """A primed coroutine that appends every item it receives to ``out``."""
    raise NotImplementedError


def broadcast(targets: Iterable[Generator]) -> Generator:
    """A primed coroutine that sends each item to every target, in the order given.

    When it is closed, it closes every target.
    """
    raise NotImplementedError


class Scheduler:
    """A round-robin scheduler of generator tasks.

    ``trace`` lists ``(task name, yielded value)`` for every yield, in the order they happened.
    """

    def __init__(self) -> None:
        self.trace: list[tuple[str, Any]] = []

    def spawn(self, name: str, gen: Generator) -> None:
        """Add a task; it runs after the tasks spawned before it."""
        raise NotImplementedError

    def run(self, max_steps: int = 10_000) -> dict[str, Any]:
        """Run tasks round-robin until none is left or ``max_steps`` steps were taken.

        Return ``{name: return value}`` for finished tasks, or ``{name: exception}`` for tasks that raised.
        """
        raise NotImplementedError
