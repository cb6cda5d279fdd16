"""An event loop made of generators: round-robin tasks that ask for services by yielding requests.

Part II builds this step by step. The idea of running generators as tasks under a little operating system
comes from David Beazley's course "A Curious Course on Coroutines and Concurrency"; this design is our
own. A task is a generator. When it yields, it hands control back to the :class:`Loop`. What it yields
is a *request*: a small frozen dataclass saying what the task wants (:class:`Sleep`, :class:`Readable`,
:class:`Spawn`, ...). The loop answers by sending a value back in when the task may go on.

Every piece has an asyncio counterpart, which is the point of Part II's last chapter: the ready deque is
``loop._ready``, the sleepers' heap is ``loop._scheduled``, :class:`Readable` is ``loop.add_reader``, and
``yield Request(...)`` is what ``await`` does underneath.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

#: A task: a generator that yields requests (or ``None`` to just let others run) and may return a value.
TaskGen = Generator[Any, Any, Any]


# -- requests: what a task may yield -------------------------------------------------------------------

@dataclass(frozen=True)
class Sleep:
    """Park me for ``seconds``; others run meanwhile."""

    seconds: float


@dataclass(frozen=True)
class Spawn:
    """Start ``gen`` as a new task named ``name``; answer its id."""

    gen: TaskGen
    name: str = ""


@dataclass(frozen=True)
class Join:
    """Park me until task ``tid`` ends; answer its return value, or raise the error it died of."""

    tid: int


@dataclass(frozen=True)
class Cancel:
    """Close task ``tid`` (its ``finally`` blocks run); answer whether it was still alive."""

    tid: int


@dataclass(frozen=True)
class Readable:
    """Park me until ``fileobj`` can be read without blocking."""

    fileobj: Any


@dataclass(frozen=True)
class Writable:
    """Park me until ``fileobj`` can be written without blocking."""

    fileobj: Any


@dataclass(frozen=True)
class WhoAmI:
    """Answer my own task id."""


class TaskCancelled(Exception):
    """What a :class:`Join` on a cancelled task raises."""


# -- clocks ------------------------------------------------------------------------------------------

class VirtualClock:
    """A clock that jumps straight to the next deadline instead of waiting for it.

    Why: chapters and tests can then run "sleep 5 seconds" tasks instantly and assert the exact order of
    events, with no real waiting and nothing that depends on the machine's speed.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Task:
    """A generator plus what the loop must remember about it while it is parked."""

    tid: int
    name: str
    gen: TaskGen
    send_value: Any = None
    throw_error: BaseException | None = None
    joiners: list[Task] = field(default_factory=list)


class Loop:
    """Run generator tasks round-robin; park them on timers and on sockets.

    ``log`` records ``(time, task name, event)`` triples (events: ``start``, ``run``, ``done``,
    ``failed``, ``cancelled``, and whatever tasks add with :meth:`note`), which is how chapters and tests
    assert interleaving. ``run()`` always ends: when no task is left, or after ``max_steps`` task steps.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock: Callable[[], float] = clock or time.monotonic
        self.log: list[tuple[float, str, str]] = []
        self.results: dict[int, Any] = {}
        self._tasks: dict[int, Task] = {}
        self._ready: deque[Task] = deque()
        self._sleepers: list[tuple[float, int, Task]] = []  # heap of (wake-up time, sequence, task)
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._selector = selectors.DefaultSelector()
        self._io_waiters: dict[tuple[int, int], Task] = {}  # (fd, event) -> task
        self._current: Task | None = None

    # -- public API --------------------------------------------------------------------------------

    def spawn(self, gen: TaskGen, name: str = "") -> int:
        """Add a task, ready to run at the back of the queue; return its id."""
        task = Task(next(self._ids), name or getattr(gen, "__name__", "task"), gen)
        self._tasks[task.tid] = task
        self._ready.append(task)
        self.note("start", task)
        return task.tid

    def note(self, event: str, task: Task | None = None) -> None:
        """Record an event for the current (or given) task in :attr:`log`."""
        task = task or self._current
        self.log.append((round(self.clock(), 6), task.name if task else "-", event))

    def events(self, kind: str | None = None) -> list[tuple[str, str]]:
        """``(task name, event)`` pairs from the log, optionally only one kind of event."""
        return [(name, ev) for _, name, ev in self.log if kind is None or ev == kind]

    @property
    def alive(self) -> int:
        return len(self._tasks)

    def run(self, max_steps: int = 1_000_000) -> int:
        """Run until no task is left or ``max_steps`` steps were taken; return the number of steps."""
        steps = 0
        while self._tasks and steps < max_steps:
            if not self._ready:
                self._wait_for_something()
                continue
            task = self._ready.popleft()
            if task.tid not in self._tasks:  # cancelled while queued
                continue
            self._step(task)
            steps += 1
        return steps

    def close(self) -> None:
        """Cancel every task left and release the selector."""
        for tid in list(self._tasks):
            self._cancel(tid)
        self._selector.close()

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one step of one task ------------------------------------------------------------------------

    def _step(self, task: Task) -> None:
        self._current = task
        self.note("run")
        try:
            if task.throw_error is not None:
                error, task.throw_error = task.throw_error, None
                request = task.gen.throw(error)
            else:
                value, task.send_value = task.send_value, None
                request = task.gen.send(value)
        except StopIteration as stop:
            self._finish(task, result=stop.value)
        except Exception as error:  # the task died: its joiners get the error, the loop goes on
            self._finish(task, error=error)
        else:
            self._serve(task, request)
        finally:
            self._current = None

    def _serve(self, task: Task, request: Any) -> None:
        """Decide what the task's request means and when the task runs again."""
        match request:
            case None:
                self._ready.append(task)
            case Sleep(seconds):
                heapq.heappush(self._sleepers, (self.clock() + seconds, next(self._seq), task))
            case Spawn(gen, name):
                task.send_value = self.spawn(gen, name)
                self._ready.append(task)
            case Join(tid):
                if tid in self._tasks:
                    self._tasks[tid].joiners.append(task)
                else:
                    self._answer_join(task, self.results.get(tid))
            case Cancel(tid):
                task.send_value = self._cancel(tid)
                self._ready.append(task)
            case WhoAmI():
                task.send_value = task.tid
                self._ready.append(task)
            case Readable(fileobj):
                self._park_on_io(task, fileobj, selectors.EVENT_READ)
            case Writable(fileobj):
                self._park_on_io(task, fileobj, selectors.EVENT_WRITE)
            case _:
                task.throw_error = TypeError(f"a task yielded {request!r}, which is not a request")
                self._ready.append(task)

    def _finish(
        self, task: Task, result: Any = None, error: BaseException | None = None, event: str = ""
    ) -> None:
        del self._tasks[task.tid]
        self.results[task.tid] = error if error is not None else result
        self.note(event or ("failed" if error is not None else "done"), task)
        for joiner in task.joiners:
            self._answer_join(joiner, self.results[task.tid])

    def _answer_join(self, joiner: Task, outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            joiner.throw_error = outcome
        else:
            joiner.send_value = outcome
        self._ready.append(joiner)

    def _cancel(self, tid: int) -> bool:
        task = self._tasks.get(tid)
        if task is None:
            return False
        for key, waiter in list(self._io_waiters.items()):
            if waiter is task:
                self._unpark_io(*key)
        self._sleepers = [entry for entry in self._sleepers if entry[2] is not task]
        heapq.heapify(self._sleepers)
        task.gen.close()  # runs the task's finally blocks: its sockets get closed
        self._finish(task, error=TaskCancelled(f"task {task.name} was cancelled"), event="cancelled")
        return True

    # -- waiting for time and I/O ----------------------------------------------------------------------

    def _park_on_io(self, task: Task, fileobj: Any, event: int) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self._io_waiters[(fd, event)] = task
        self._sync_selector(fd)

    def _unpark_io(self, fd: int, event: int) -> Task:
        task = self._io_waiters.pop((fd, event))
        self._sync_selector(fd)
        return task

    def _sync_selector(self, fd: int) -> None:
        mask = sum(ev for (f, ev) in self._io_waiters if f == fd)
        registered = fd in self._selector.get_map()
        if mask and registered:
            self._selector.modify(fd, mask)
        elif mask:
            self._selector.register(fd, mask)
        elif registered:
            self._selector.unregister(fd)

    def _wait_for_something(self) -> None:
        """Nothing is ready: block in ``select`` until a socket is ready or the next sleeper is due."""
        virtual = isinstance(self.clock, VirtualClock)
        timeout: float | None = None
        if self._sleepers:
            timeout = max(0.0, self._sleepers[0][0] - self.clock())
        if self._io_waiters:
            io_timeout = 0.0 if (virtual and timeout is not None) else timeout
            for key, mask in self._selector.select(io_timeout):
                for event in (selectors.EVENT_READ, selectors.EVENT_WRITE):
                    if mask & event and (key.fd, event) in self._io_waiters:
                        self._ready.append(self._unpark_io(key.fd, event))
        elif timeout is None:
            raise RuntimeError("deadlock: every task waits for another task and nothing else can happen")
        elif virtual:
            self.clock.now = self._sleepers[0][0]  # type: ignore[attr-defined]
        else:
            time.sleep(timeout)
        now = self.clock()
        while self._sleepers and self._sleepers[0][0] <= now:
            self._ready.append(heapq.heappop(self._sleepers)[2])


# -- sockets, the generator way -------------------------------------------------------------------------

def accept(listener: socket.socket) -> Generator[Any, Any, tuple[socket.socket, Any]]:
    """Wait until a client connects, then accept it without blocking the loop."""
    yield Readable(listener)
    conn, addr = listener.accept()
    conn.setblocking(False)
    return conn, addr


def recv(conn: socket.socket, size: int = 65536) -> Generator[Any, Any, bytes]:
    """Wait until data (or end of stream, ``b""``) arrives, then read it."""
    yield Readable(conn)
    return conn.recv(size)


def send_all(conn: socket.socket, data: bytes) -> Generator[Any, Any, None]:
    """Send every byte, parking whenever the socket's buffer is full."""
    view = memoryview(data)
    while view:
        yield Writable(conn)
        view = view[conn.send(view):]


def connect(address: tuple[str, int]) -> Generator[Any, Any, socket.socket]:
    """Open a TCP connection without blocking: start it, then wait until the socket is writable."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setblocking(False)
    conn.connect_ex(address)
    yield Writable(conn)
    error = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        conn.close()
        raise ConnectionError(f"could not connect to {address}: errno {error}")
    return conn


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A non-blocking listening socket; ``port=0`` lets the OS choose a free port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen()
    listener.setblocking(False)
    return listener


def echo_client_handler(loop: Loop, conn: socket.socket, name: str) -> TaskGen:
    """Echo everything one client sends until it hangs up; log each echo."""
    try:
        while data := (yield from recv(conn)):
            loop.note(f"echo {data.decode(errors='replace')!r}")
            yield from send_all(conn, data)
    finally:
        conn.close()


def echo_server(loop: Loop, listener: socket.socket, max_clients: int) -> TaskGen:
    """Accept ``max_clients`` clients, each served by its own task; the bound keeps a demo finite."""
    try:
        for number in range(1, max_clients + 1):
            conn, _ = yield from accept(listener)
            name = f"handler-{number}"
            yield Spawn(echo_client_handler(loop, conn, name), name)
    finally:
        listener.close()


__all__ = [
    "Cancel", "Join", "Loop", "Readable", "Sleep", "Spawn", "Task", "TaskCancelled", "TaskGen",
    "VirtualClock", "WhoAmI", "Writable", "accept", "connect", "echo_client_handler", "echo_server",
    "listen", "recv", "send_all",
]
