"""Lab 3 instructor solution: a toy event loop for native coroutines, with spawn and join."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sleep:
    seconds: float

    def __await__(self) -> Generator[Sleep, None, None]:
        yield self


def sleep(seconds: float = 0) -> Sleep:
    return Sleep(seconds)


class Task:
    def __init__(self, coro: Coroutine[Any, None, Any], name: str) -> None:
        self.coro = coro
        self.name = name
        self._done = False
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Task] = []

    def done(self) -> bool:
        return self._done

    def result(self) -> Any:
        if not self._done:
            raise RuntimeError(f"task {self.name!r} is not done")
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self) -> BaseException | None:
        if not self._done:
            raise RuntimeError(f"task {self.name!r} is not done")
        return self._exception

    def __await__(self) -> Generator[Task, None, Any]:
        if not self._done:
            yield self
        return self.result()


class Loop:
    def __init__(self) -> None:
        self.now = 0.0
        self.steps = 0
        self._ready: deque[Task] = deque()
        self._sleeping: list[tuple[float, int, Task]] = []
        self._order = itertools.count()
        self._tasks: list[Task] = []

    def spawn(self, coro: Coroutine[Any, None, Any], name: str | None = None) -> Task:
        task = Task(coro, name or f"task-{len(self._tasks)}")
        self._tasks.append(task)
        self._ready.append(task)
        return task

    def run(self, main: Coroutine[Any, None, Any], max_steps: int = 100_000) -> Any:
        first = self.spawn(main, "main")
        while self._ready or self._sleeping:
            if not self._ready:
                self._wake_sleepers()
                continue
            if self.steps >= max_steps:
                raise RuntimeError(f"gave up after max_steps={max_steps} steps")
            self._step(self._ready.popleft())
        stuck = [task.name for task in self._tasks if not task.done()]
        if stuck:
            raise RuntimeError(f"deadlock: {stuck} wait for tasks that can never finish")
        return first.result()

    def _wake_sleepers(self) -> None:
        self.now = self._sleeping[0][0]
        while self._sleeping and self._sleeping[0][0] <= self.now:
            _, _, task = heapq.heappop(self._sleeping)
            self._ready.append(task)

    def _step(self, task: Task) -> None:
        self.steps += 1
        try:
            request = task.coro.send(None)
        except StopIteration as stop:
            self._finish(task, result=stop.value)
            return
        except Exception as error:
            self._finish(task, exception=error)
            return
        if isinstance(request, Sleep):
            if request.seconds <= 0:
                self._ready.append(task)
            else:
                heapq.heappush(self._sleeping, (self.now + request.seconds, next(self._order), task))
        elif isinstance(request, Task):
            request._waiters.append(task)
        else:
            task.coro.close()
            error = RuntimeError(f"task {task.name!r} yielded {request!r}, which this loop does not understand")
            self._finish(task, exception=error)

    def _finish(self, task: Task, result: Any = None, exception: BaseException | None = None) -> None:
        task._done = True
        task._result = result
        task._exception = exception
        self._ready.extend(task._waiters)
        task._waiters.clear()
