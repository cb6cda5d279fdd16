"""An event loop made of generators: tasks that ask for services by yielding small request objects.

Part II builds this step by step. The idea of running generators as tasks under a tiny operating system
comes from David Beazley's course "A Curious Course on Coroutines and Concurrency"; this design is our
own. A task is a generator. Each ``yield`` hands control back to the :class:`Loop`, and what the task
yields is a *request*, a frozen dataclass saying what it wants:

=====================  ============================================  ===================================
request                the task is resumed ...                       with the answer
=====================  ============================================  ===================================
``None``               at its next turn                              ``None``
:class:`Sleep`         once ``seconds`` have passed on the clock     ``None``
:class:`Spawn`         at its next turn; the new task is queued      the new task's id
:class:`Join`          when that task has ended                      its return value (or its error)
:class:`Cancel`        at its next turn; the other task is closed    whether it was still alive
:class:`Readable`      when the socket can be read without blocking  ``None``
:class:`Writable`      when the socket can be written                ``None``
:class:`WhoAmI`        at its next turn                              its own id
=====================  ============================================  ===================================

Every ``yield`` is a switch point: the loop regains control and other ready tasks run before this one
runs again. The clock can be injected; with a :class:`VirtualClock` sleeping costs no real time and the
order of events is exact, which is how the book and the tests assert interleaving (from :attr:`Loop.trace`,
never from wall time).

Each piece has an asyncio counterpart, the point of Part II's last chapter: the ready deque is the
loop's ``_ready`` deque, the sleepers' heap is its ``_scheduled`` heap, :class:`Readable` is
``loop.add_reader``, and ``yield Request(...)`` is what ``await`` does underneath.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

#: A task: a generator that yields requests (or ``None`` to let others run) and may return a value.
#: A native coroutine works too, if what it awaits yields the requests (Part III shows how).
TaskGen = Generator[Any, Any, Any] | Coroutine[Any, Any, Any]


# -- requests: what a task may yield ------------------------------------------------------------------

@dataclass(frozen=True)
class Sleep:
    """Park me for ``seconds`` on the loop's clock; other tasks run meanwhile."""

    seconds: float


@dataclass(frozen=True)
class Spawn:
    """Start ``gen`` as a new task called ``name``; answer its id. The new task waits for its turn."""

    gen: TaskGen
    name: str = ""


@dataclass(frozen=True)
class Join:
    """Park me until task ``task_id`` ends; answer its return value, or raise in me the error it died of."""

    task_id: int


@dataclass(frozen=True)
class Cancel:
    """Close task ``task_id`` now, so its ``finally`` blocks run; answer whether it was still alive."""

    task_id: int


@dataclass(frozen=True)
class Readable:
    """Park me until ``sock`` (a socket, or anything with ``fileno()``) can be read without blocking."""

    sock: Any


@dataclass(frozen=True)
class Writable:
    """Park me until ``sock`` can be written without blocking."""

    sock: Any


@dataclass(frozen=True)
class WhoAmI:
    """Answer my own task id."""


class TaskCancelled(Exception):
    """Raised in a task that joins a task which was cancelled."""


class Deadlock(RuntimeError):
    """No task is ready, no timer is pending and no socket is awaited: waiting would never end."""


# -- clocks ---------------------------------------------------------------------------------------------

class VirtualClock:
    """A clock that jumps straight to the next deadline when no task can run, instead of waiting.

    Why: chapters and tests can run "sleep 30 seconds" tasks instantly and assert the exact order of
    events, with nothing that depends on the machine's speed. Time stands still while tasks run; it only
    moves when every task is asleep (or waits for a socket that is not ready yet).
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_to(self, when: float) -> None:
        """Move the clock forward to ``when`` (never backwards)."""
        self.now = max(self.now, when)


# -- the loop -------------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Task:
    """A generator plus what the loop must remember about it between two of its steps."""

    id: int
    name: str
    gen: TaskGen
    answer: Any = None                   # sent into the generator at its next step ...
    error: BaseException | None = None   # ... or, if set, thrown into it instead
    joiners: list[_Task] = field(default_factory=list)
    waiting_for: str = ""                # what it is parked on, for Deadlock messages


class Loop:
    """Run generator tasks round-robin; park them on timers, on other tasks and on sockets.

    Public API: :meth:`spawn`, :meth:`run`, :meth:`result`, :meth:`note`, :meth:`events`, :attr:`trace`,
    :attr:`alive`, :meth:`close` (or use ``with Loop() as loop:``).

    ``trace`` lists ``(task name, event)`` pairs in the order they happened. The loop records
    ``spawned``, ``run`` (each step), ``done``, ``failed: <error>`` and ``cancelled``; tasks add their own
    events with :meth:`note`.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock: Callable[[], float] = clock or time.monotonic
        self.trace: list[tuple[str, str]] = []
        self._tasks: dict[int, _Task] = {}                 # live tasks by id
        self._results: dict[int, Any] = {}                 # ended tasks: return values ...
        self._errors: dict[int, BaseException] = {}        # ... or what they died of
        self._ready: deque[_Task] = deque()
        self._sleepers: list[tuple[float, int, _Task]] = []  # heap of (deadline, tie-breaker, task)
        self._tiebreak = itertools.count()
        self._ids = itertools.count(1)
        self._selector = selectors.DefaultSelector()
        self._io_waiters: dict[tuple[int, int], _Task] = {}  # (fd, EVENT_READ or EVENT_WRITE) -> task
        self._current: _Task | None = None

    # -- public API -------------------------------------------------------------------------------------

    def spawn(self, gen: TaskGen, name: str = "") -> int:
        """Add a task at the back of the ready queue and return its id."""
        if not isinstance(gen, Generator | Coroutine):
            raise TypeError(f"a task must be a generator or coroutine object, not {gen!r} (forgot to call?)")
        task = _Task(next(self._ids), name or getattr(gen, "__name__", "task"), gen)
        self._tasks[task.id] = task
        self._ready.append(task)
        self._record(task, "spawned")
        return task.id

    def note(self, event: str) -> None:
        """Append ``(running task's name, event)`` to :attr:`trace`: how tasks make their progress visible."""
        self.trace.append((self._current.name if self._current else "-", event))

    def events(self, prefix: str = "") -> list[tuple[str, str]]:
        """The ``(task name, event)`` pairs of :attr:`trace` whose event starts with ``prefix``."""
        return [(name, event) for name, event in self.trace if event.startswith(prefix)]

    @property
    def alive(self) -> int:
        """How many tasks have not ended yet."""
        return len(self._tasks)

    def result(self, task_id: int) -> Any:
        """What an ended task returned; raises the error it died of (:class:`TaskCancelled` if cancelled)."""
        if task_id in self._errors:
            raise self._errors[task_id]
        if task_id in self._results:
            return self._results[task_id]
        state = "still running" if task_id in self._tasks else "unknown"
        raise LookupError(f"task {task_id} is {state}")

    def run(
        self,
        until: int | Callable[[], bool] | None = None,
        *,
        max_steps: int = 100_000,
        idle_timeout: float | None = None,
    ) -> int:
        """Run tasks until none is left, ``until`` holds, or ``max_steps`` steps were taken.

        ``until`` is a task id (stop once that task has ended) or a function that returns ``True`` when
        it is time to stop. A *step* resumes one task until its next ``yield``. ``idle_timeout`` bounds,
        in real seconds, a wait in which only sockets could wake a task: if none becomes ready in time,
        :class:`TimeoutError`. Together they guarantee that a demo or a test ends. Returns the steps taken.
        """
        finished = self._stop_condition(until)
        steps = 0
        while self._tasks and steps < max_steps and not finished():
            self._wait(idle_timeout)
            for _ in range(len(self._ready)):  # one round: each task ready *now* gets one step
                task = self._ready.popleft()
                if task.id not in self._tasks:  # cancelled while it was queued
                    continue
                self._step(task)
                steps += 1
                if steps >= max_steps or finished():
                    break
        return steps

    def close(self) -> None:
        """Cancel every task left (their ``finally`` blocks run) and release the selector."""
        for task_id in list(self._tasks):
            self._cancel(task_id)
        self._selector.close()

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one step of one task ---------------------------------------------------------------------------

    def _step(self, task: _Task) -> None:
        self._current = task
        self._record(task, "run")
        answer, error = task.answer, task.error
        task.answer, task.error, task.waiting_for = None, None, ""
        try:
            request = task.gen.send(answer) if error is None else task.gen.throw(error)
        except StopIteration as stop:
            self._finish(task, "done", result=stop.value)
        except Exception as exc:  # the task died: joiners get the error, the loop goes on
            self._finish(task, f"failed: {exc!r}", error=exc)
        else:
            try:
                self._serve(task, request)
            except Exception as exc:  # a request the loop cannot serve: the error goes back to the task
                task.error = exc
                self._ready.append(task)
        finally:
            self._current = None

    def _serve(self, task: _Task, request: Any) -> None:
        """Decide what the request means and when the task runs again. Raise (changing nothing) to refuse."""
        match request:
            case None:
                self._ready.append(task)
            case Sleep(seconds):
                heapq.heappush(self._sleepers, (self.clock() + seconds, next(self._tiebreak), task))
                task.waiting_for = f"sleep {seconds}"
            case Spawn(gen, name):
                self._resume(task, self.spawn(gen, name))
            case Join(task_id):
                self._join(task, task_id)
            case Cancel(task_id):
                self._resume(task, self._cancel(task_id))
            case WhoAmI():
                self._resume(task, task.id)
            case Readable(sock):
                self._park_on_io(task, sock, selectors.EVENT_READ)
            case Writable(sock):
                self._park_on_io(task, sock, selectors.EVENT_WRITE)
            case _:
                raise TypeError(f"task {task.name!r} yielded {request!r}, which is not a request")

    def _resume(self, task: _Task, answer: Any) -> None:
        task.answer = answer
        self._ready.append(task)

    def _join(self, task: _Task, task_id: int) -> None:
        if task_id == task.id:
            raise RuntimeError("a task cannot join itself")
        target = self._tasks.get(task_id)
        if target is not None:
            target.joiners.append(task)
            task.waiting_for = f"join {target.name}"
        elif task_id in self._results or task_id in self._errors:
            self._deliver(task, task_id)
        else:
            raise LookupError(f"no task with id {task_id}")

    def _deliver(self, joiner: _Task, task_id: int) -> None:
        """Wake ``joiner`` with the outcome of the ended task ``task_id``."""
        if task_id in self._errors:
            joiner.error = self._errors[task_id]
        else:
            joiner.answer = self._results[task_id]
        self._ready.append(joiner)

    def _finish(
        self, task: _Task, event: str, result: Any = None, error: BaseException | None = None
    ) -> None:
        del self._tasks[task.id]
        if error is None:
            self._results[task.id] = result
        else:
            self._errors[task.id] = error
        self._record(task, event)
        for joiner in task.joiners:
            if joiner.id in self._tasks:  # a joiner may have been cancelled meanwhile
                self._deliver(joiner, task.id)

    def _cancel(self, task_id: int) -> bool:
        task = self._tasks.get(task_id)
        if task is None:
            return False
        self._forget_waits(task)
        try:
            task.gen.close()  # GeneratorExit at its yield: its finally blocks run now and must not wait
        except Exception as exc:
            self._finish(task, f"failed: {exc!r}", error=exc)
        else:
            self._finish(task, "cancelled", error=TaskCancelled(f"task {task.name!r} was cancelled"))
        return True

    def _forget_waits(self, task: _Task) -> None:
        """Remove a task from the sleepers' heap and the socket table (the ready queue skips dead tasks)."""
        if any(entry[2] is task for entry in self._sleepers):
            self._sleepers = [entry for entry in self._sleepers if entry[2] is not task]
            heapq.heapify(self._sleepers)
        for key in [key for key, waiter in self._io_waiters.items() if waiter is task]:
            self._unpark_io(key)

    def _record(self, task: _Task, event: str) -> None:
        self.trace.append((task.name, event))

    def _stop_condition(self, until: int | Callable[[], bool] | None) -> Callable[[], bool]:
        if until is None:
            return lambda: False
        if callable(until):
            return until
        if until not in self._tasks and until not in self._results and until not in self._errors:
            raise LookupError(f"no task with id {until}")
        return lambda: until not in self._tasks

    # -- waiting for time and sockets -------------------------------------------------------------------

    def _park_on_io(self, task: _Task, sock: Any, event: int) -> None:
        fd = sock if isinstance(sock, int) else sock.fileno()
        if fd < 0:
            raise ValueError(f"cannot wait on a closed socket: {sock!r}")
        if (fd, event) in self._io_waiters:
            other = self._io_waiters[(fd, event)].name
            raise RuntimeError(f"task {other!r} already waits for the same event on fd {fd}")
        self._update_selector(fd, self._mask(fd) | event)  # may raise: nothing was changed yet
        self._io_waiters[(fd, event)] = task
        task.waiting_for = f"{'read' if event == selectors.EVENT_READ else 'write'} fd {fd}"

    def _unpark_io(self, key: tuple[int, int]) -> _Task:
        task = self._io_waiters.pop(key)
        self._update_selector(key[0], self._mask(key[0]))
        return task

    def _mask(self, fd: int) -> int:
        """The events some task waits for on ``fd``."""
        mask = 0
        for waited_fd, event in self._io_waiters:
            if waited_fd == fd:
                mask |= event
        return mask

    def _update_selector(self, fd: int, mask: int) -> None:
        registered = fd in self._selector.get_map()
        if mask and registered:
            self._selector.modify(fd, mask)
        elif mask:
            self._selector.register(fd, mask)
        elif registered:
            self._selector.unregister(fd)

    def _wait(self, idle_timeout: float | None) -> None:
        """Wait until some task can run, then move every task whose time or socket has come to the queue.

        Called once per round, also when tasks are ready (then it only polls), so sleepers and sockets are
        served even while busy tasks keep the queue full.
        """
        virtual = isinstance(self.clock, VirtualClock)
        idle = not self._ready and not self._sleepers
        if self._ready or (virtual and self._sleepers):
            timeout: float | None = 0.0
        elif self._sleepers:
            timeout = max(0.0, self._sleepers[0][0] - self.clock())
        elif self._io_waiters:
            timeout = idle_timeout
        else:
            stuck = ", ".join(f"{t.name} ({t.waiting_for or 'parked'})" for t in self._tasks.values())
            raise Deadlock(f"no task can ever run again: {stuck}")
        if self._io_waiters:
            ready = self._selector.select(timeout)
            for key, mask in ready:
                for event in (selectors.EVENT_READ, selectors.EVENT_WRITE):
                    if mask & event and (key.fd, event) in self._io_waiters:
                        self._ready.append(self._unpark_io((key.fd, event)))
            if idle and not ready and idle_timeout is not None:
                raise TimeoutError(f"no socket became ready within idle_timeout={idle_timeout} s")
        elif timeout:
            time.sleep(timeout)  # only sleepers are left: real time must pass
        if virtual and not self._ready and self._sleepers:
            self.clock.advance_to(self._sleepers[0][0])  # type: ignore[attr-defined]
        now = self.clock()
        while self._sleepers and self._sleepers[0][0] <= now:
            self._ready.append(heapq.heappop(self._sleepers)[2])


# -- sockets, the generator way -------------------------------------------------------------------------

def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A non-blocking listening socket; ``port=0`` lets the operating system choose a free port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen()
    listener.setblocking(False)
    return listener


def accept(listener: socket.socket) -> Generator[Any, Any, tuple[socket.socket, Any]]:
    """Wait until a client connects, then accept it; the new socket is non-blocking too."""
    yield Readable(listener)
    conn, addr = listener.accept()
    conn.setblocking(False)
    return conn, addr


def connect(address: tuple[str, int]) -> Generator[Any, Any, socket.socket]:
    """Open a TCP connection without blocking: start it, then wait until the socket is writable."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setblocking(False)
    conn.connect_ex(address)  # returns at once ("in progress"); the outcome is known when writable
    yield Writable(conn)
    error = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        conn.close()
        raise ConnectionError(f"could not connect to {address}: errno {error}")
    return conn


def recv(conn: socket.socket, size: int = 65536) -> Generator[Any, Any, bytes]:
    """Wait until data (or the end of the stream, ``b""``) arrives, then read it."""
    yield Readable(conn)
    return conn.recv(size)


def send_all(conn: socket.socket, data: bytes) -> Generator[Any, Any, None]:
    """Send every byte, parking whenever the socket's send buffer is full."""
    view = memoryview(data)
    while view:
        yield Writable(conn)
        view = view[conn.send(view):]


def echo_handler(loop: Loop, conn: socket.socket) -> TaskGen:
    """Echo everything one client sends until it hangs up; note each echo in the loop's trace."""
    try:
        while data := (yield from recv(conn)):
            loop.note(f"echo {data.decode(errors='replace')}")
            yield from send_all(conn, data)
    finally:
        conn.close()


def echo_server(loop: Loop, listener: socket.socket, max_clients: int) -> TaskGen:
    """Accept ``max_clients`` clients, each served by its own task; the bound keeps a demo finite."""
    try:
        for number in range(1, max_clients + 1):
            conn, _ = yield from accept(listener)
            loop.note(f"accepted client {number}")
            yield Spawn(echo_handler(loop, conn), f"handler-{number}")
    finally:
        listener.close()


__all__ = [
    "Cancel", "Deadlock", "Join", "Loop", "Readable", "Sleep", "Spawn", "TaskCancelled", "TaskGen",
    "VirtualClock", "WhoAmI", "Writable", "accept", "connect", "echo_handler", "echo_server", "listen",
    "recv", "send_all",
]
