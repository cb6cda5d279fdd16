"""How many CPU threads the model's matrix work may use: a fixed number, or measured while serving.

torch defaults to one thread per physical core. On a quiet machine that is fastest; on a shared one it can
be ruinous: OpenMP's threads spin while they wait for each other, so when another process holds one of the
cores, every parallel region of every model step waits for the slowest thread.

Measured on a 2-core machine (``benchmarks/bench_threads.py``, figures in ``benchmarks/RESULTS.md``), output
tokens/s of the batched server (int8), quiet / with one competing busy process:

- 2 threads: c=1 70.3 / 2.7, c=8 270.4 / 6.8 (40 times slower when busy);
- 1 thread: c=1 60.4 / 64.8, c=8 199.5 / 198.5;
- 2 threads with ``OMP_WAIT_POLICY=PASSIVE``: c=1 36.2 / 54.3, c=8 116.5 / 176.3.

Neither fixed number is right on a machine whose load changes, so by default the batched engine's worker
watches (:class:`ThreadTuner`): it runs with every core while its threads get them, steps down to every
core but one when they do not (a competitor arrived), and back up when a core sits idle again.
``--threads N`` fixes the number instead; the naive and threads engines use :func:`default_threads` (every
core but :data:`DEFAULT_SHARE`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: Fixed-number engines leave this many cores to everything else on the machine (the event loop, the load
#: tester, a notebook, other users), but always use at least one.
DEFAULT_SHARE = 1


def _allowed_cores() -> set[int] | None:
    """The ids of the cores this process may run on, where the OS says (Linux); ``None`` elsewhere."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def cores() -> int:
    """How many cores this process may run on."""
    allowed = _allowed_cores()
    return len(allowed) if allowed is not None else (os.cpu_count() or 1)


def default_threads() -> int:
    """One thread per available core, minus :data:`DEFAULT_SHARE`, and at least one."""
    return max(1, cores() - DEFAULT_SHARE)


def use_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``None``: :func:`default_threads`) and return the number set."""
    import torch

    n = threads or default_threads()
    torch.set_num_threads(n)
    return n


CLOCK_TICKS = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def machine_idle_seconds() -> float | None:
    """Seconds the cores this process may use have spent idle since boot (Linux's ``/proc/stat``), or
    ``None`` where that cannot be read. Only our cores: in a container the file lists the host's."""
    allowed = _allowed_cores()
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and not line.startswith("cpu ")]
    except OSError:
        return None
    ticks = [int(f[4]) + int(f[5]) for f in lines  # idle + iowait
             if len(f) > 5 and f[0][3:].isdigit() and (allowed is None or int(f[0][3:]) in allowed)]
    return sum(ticks) / CLOCK_TICKS if ticks else None


class ThreadTuner:
    """Chooses between ``few`` and ``many`` threads from what the machine gives the steps it times.

    The engine's worker calls :meth:`before_step` (which applies the count) and :meth:`after_step` around each
    step. Over windows of at least ``window`` seconds of steps it reads two things, no probing needed:

    - with ``many``: the process's CPU time per thread per second of step. OpenMP's threads spin while they
      wait, so it is 1.0 when each has a core; measured on 2 cores, 0.99-1.00 on a quiet machine and
      0.62-0.68 beside one busy process, whose core our second thread then shares. Below ``busy_share``, it
      switches to ``few``, after one window: every step with a starved thread is slow.
    - with ``few``: how many cores sat idle while its steps ran (``/proc/stat``); measured 0.98 of a core
      quiet and 0.00 busy. When at least ``free_share`` of the extra cores were idle for two windows in a
      row, it switches back to ``many``.

    The readers are parameters so tests can play a machine: ``cpu_seconds`` (the process's CPU time, all its
    threads), ``idle_seconds`` (idle time summed over the cores we may use) and ``clock``.

    It relies on OpenMP's waiting threads spinning (they do for a while after each op, and a step's ops follow
    each other within microseconds): with ``OMP_WAIT_POLICY=PASSIVE`` they would sleep, the share would read
    low on a quiet machine, and it would settle on ``few``.
    """

    def __init__(self, few: int, many: int, apply: Callable[[int], None], *,
                 cpu_seconds: Callable[[], float] = time.process_time,
                 idle_seconds: Callable[[], float | None] = machine_idle_seconds,
                 clock: Callable[[], float] = time.perf_counter, window: float = 0.25, busy_share: float = 0.8,
                 free_share: float = 0.75) -> None:
        if not 1 <= few < many:
            raise ValueError("ThreadTuner needs 1 <= few < many")
        self.few, self.many, self._apply = few, many, apply
        self._cpu, self._idle, self._clock = cpu_seconds, idle_seconds, clock
        self.window, self.busy_share, self.free_share = window, busy_share, free_share
        self.current = many
        self.switches = 0
        self._applied: int | None = None
        self._start: tuple[float, float, float] | None = None
        self._wall = self._cpu_used = self._idle_seen = 0.0  # sums over the current window
        self._free_windows = 0

    def before_step(self) -> None:
        """Apply the thread count (only when it changes: setting it is not free), and start the step's clock."""
        if self.current != self._applied:
            self._apply(self.current)
            self._applied = self.current
        self._start = (self._clock(), *self._readings())

    def after_step(self) -> None:
        if self._start is None:
            return
        wall, cpu, idle = self._start
        self._start = None
        cpu_now, idle_now = self._readings()
        self._wall += self._clock() - wall
        self._cpu_used += cpu_now - cpu
        self._idle_seen += idle_now - idle
        if self._wall >= self.window:
            self._decide(self._wall, self._cpu_used, self._idle_seen)
            self._wall = self._cpu_used = self._idle_seen = 0.0

    def _readings(self) -> tuple[float, float]:
        """(CPU time, idle time), each read only when the current count's decision uses it: a step on the hot
        path pays for one reader, not two. The count changes only between windows, so a window's readings
        all come from the same reader."""
        if self.current == self.many:
            return self._cpu(), 0.0
        return 0.0, self._idle() or 0.0

    def _decide(self, wall: float, cpu: float, idle: float) -> None:
        if self.current == self.many:
            if cpu / (wall * self.many) < self.busy_share:
                self._switch(self.few)
            return
        if idle / wall >= self.free_share * (self.many - self.few):
            self._free_windows += 1
            if self._free_windows >= 2:
                self._switch(self.many)
        else:
            self._free_windows = 0

    def _switch(self, threads: int) -> None:
        self.current = threads
        self.switches += 1
        self._free_windows = 0


def thread_tuner() -> ThreadTuner | None:
    """The tuner for a model worker on this machine: every core against every core but one; ``None`` on one
    core (nothing to choose) or where the machine's idle time cannot be read."""
    import torch

    n = cores()
    if n < 2 or machine_idle_seconds() is None:
        return None
    return ThreadTuner(default_threads(), n, torch.set_num_threads)
