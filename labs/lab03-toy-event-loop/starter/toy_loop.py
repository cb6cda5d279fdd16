"""Lab 3: a toy event loop for native coroutines, with spawn and join. Run `corolab lab check 3`."""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sleep:
    """A request to the loop: resume me after ``seconds`` on the loop's fake clock."""

    seconds: float

    def __await__(self) -> Generator[Sleep, None, None]:
        """Yield this request up the ``await`` chain to the loop, once."""
        raise NotImplementedError("Sleep.__await__() is not written yet")


def sleep(seconds: float = 0) -> Sleep:
    """``await sleep(s)`` pauses the calling task for ``s`` fake seconds; ``sleep(0)`` lets others run."""
    raise NotImplementedError("sleep() is not written yet")


class Task:
    """A coroutine the loop drives, and a handle to its outcome: ``await task`` waits for it (join)."""

    def __init__(self, coro: Coroutine[Any, None, Any], name: str) -> None:
        self.coro = coro
        self.name = name

    def done(self) -> bool:
        """True once the coroutine has returned or raised."""
        raise NotImplementedError("Task.done() is not written yet")

    def result(self) -> Any:
        """The coroutine's return value; raise its exception if it failed; RuntimeError if not done."""
        raise NotImplementedError("Task.result() is not written yet")

    def exception(self) -> BaseException | None:
        """The exception the coroutine died of, or None; RuntimeError if not done."""
        raise NotImplementedError("Task.exception() is not written yet")

    def __await__(self) -> Generator[Task, None, Any]:
        """Join: if the task is not done, yield it to the loop (park me until it is done).

        Then return its result, or raise its exception. A finished task must not pause the caller.
        """
        raise NotImplementedError("Task.__await__() is not written yet")


class Loop:
    """Round-robin loop on a fake clock. ``now`` is the clock; ``steps`` counts every ``send(None)``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.steps = 0

    def spawn(self, coro: Coroutine[Any, None, Any], name: str | None = None) -> Task:
        """Wrap ``coro`` in a Task and put it at the back of the ready queue; do not run it yet."""
        raise NotImplementedError("Loop.spawn() is not written yet")

    def run(self, main: Coroutine[Any, None, Any], max_steps: int = 100_000) -> Any:
        """Spawn ``main``, run until every task is done, return main's result (or raise its exception).

        Raise RuntimeError mentioning "deadlock" if tasks are left that nothing can wake, and
        RuntimeError if more than ``max_steps`` steps would be needed.
        """
        raise NotImplementedError("Loop.run() is not written yet")
