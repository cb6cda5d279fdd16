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
measures (:class:`ThreadTuner`): it runs with every core, and whenever its steps say that fewer threads are
faster (a competitor arrived), it steps down; it tries every core again from time to time, less often each
time that loses. ``--threads N`` fixes the number instead; the naive and threads engines use
:func:`default_threads` (every core but :data:`DEFAULT_SHARE`).
"""

from __future__ import annotations

import os
import statistics
from collections import deque
from collections.abc import Callable

#: Fixed-number engines leave this many cores to everything else on the machine (the event loop, the load
#: tester, a notebook, other users), but always use at least one.
DEFAULT_SHARE = 1


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """One thread per available core, minus :data:`DEFAULT_SHARE`, and at least one."""
    return max(1, cores() - DEFAULT_SHARE)


def use_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``None``: :func:`default_threads`) and return the number set."""
    import torch

    n = threads or default_threads()
    torch.set_num_threads(n)
    return n


class ThreadTuner:
    """Chooses between two thread counts, ``few`` and ``many``, from the decode steps the engine times.

    The engine calls :meth:`before_step` (which applies the count for the next step) and :meth:`after_step`
    with the step's rows and seconds, all from the one thread that runs the model (torch's thread count is
    that thread's OpenMP setting). Steps are compared only at the same number of rows: a step's cost grows
    with its rows, and from one step to the next the batch rarely changes.

    - It starts with ``many``. Every ``probe_every`` steps it runs ``probe_steps`` steps with the other count
      and keeps whichever was faster: the probe's fastest step against the faster of the last two steps at
      the same rows. A probe for more threads must win by ``margin``, so noise does not flip it. A probe
      step slower than ``alarm`` times those ends the probe at once.
    - A probe that loses doubles the wait before the next one (up to ``max_probe_every``), so a machine
      that stays busy pays for a slow probe step ever more rarely. A switch resets the wait.
    - Two steps in a row slower than ``alarm`` times the median of the last ``window`` steps (a competitor just
      took a core) start a probe at once.
    """

    def __init__(self, few: int, many: int, apply: Callable[[int], None], *, probe_every: int = 64,
                 max_probe_every: int = 4096, probe_steps: int = 2, window: int = 8, margin: float = 0.9,
                 alarm: float = 3.0) -> None:
        if not 1 <= few < many:
            raise ValueError("ThreadTuner needs 1 <= few < many")
        self.few, self.many, self._apply = few, many, apply
        self.probe_every, self.max_probe_every = probe_every, max_probe_every
        self.probe_steps, self.margin, self.alarm = probe_steps, margin, alarm
        self.current = many
        self.wait = probe_every          # steps until the next probe
        self._since = 0                  # steps since the last probe or switch
        self._recent: deque[tuple[int, float]] = deque(maxlen=window)  # (rows, seconds) with ``current``
        self._probe: list[tuple[int, float]] | None = None  # steps with the other count, while probing
        self._applied: int | None = None
        self.switches = 0

    @property
    def probing(self) -> bool:
        return self._probe is not None

    @property
    def other(self) -> int:
        return self.few if self.current == self.many else self.many

    def threads_for_next_step(self) -> int:
        return self.other if self.probing else self.current

    def before_step(self) -> None:
        """Apply the thread count for the coming step (only when it changes: setting it is not free)."""
        n = self.threads_for_next_step()
        if n != self._applied:
            self._apply(n)
            self._applied = n

    def after_step(self, rows: int, seconds: float) -> None:
        if self._probe is not None:
            self._probe.append((rows, seconds))
            before = self._last(rows)
            hopeless = before is not None and seconds > self.alarm * before  # no need to see it twice
            if hopeless or len(self._probe) >= self.probe_steps:
                self._decide()
            return
        history = [s for r, s in self._recent if r == rows]
        self._recent.append((rows, seconds))
        self._since += 1
        # Two slow steps in a row, not one: a single step can be slow for reasons that pass (a page fault,
        # a garbage collection).
        slow_now = len(history) >= 3 and seconds > self.alarm * statistics.median(history[:-1])
        alarmed = slow_now and history[-1] > self.alarm * statistics.median(history[:-1])
        if self._since >= self.wait or alarmed:
            self._probe = []

    def _last(self, rows: int) -> float | None:
        """The faster of the last two steps with the current count at ``rows`` rows: how things are now."""
        same = [seconds for r, seconds in self._recent if r == rows][-self.probe_steps:]
        return min(same) if len(same) >= min(2, self.probe_steps) else None

    def _decide(self) -> None:
        probe, self._probe = self._probe or [], None
        self._since = 0
        rows = probe[-1][0]
        before = self._last(rows)
        timed = [seconds for r, seconds in probe if r == rows]
        if before is None or len(timed) < len(probe):  # the batch changed: no fair comparison, try later
            return
        # fastest against fastest, two steps each: neither side gets the luckier statistic
        wins = min(timed) < (self.margin * before if self.other > self.current else before)
        if wins:
            self.current = self.other
            self.switches += 1
            self._recent.clear()
            self._recent.extend(probe)
            self.wait = self.probe_every
        else:
            self.wait = min(self.wait * 2, self.max_probe_every)


def thread_tuner() -> ThreadTuner | None:
    """The tuner for a model worker on this machine: every core against every core but one (``None`` on
    one core, where there is nothing to choose)."""
    import torch

    n = cores()
    if n < 2:
        return None
    return ThreadTuner(default_threads(), n, torch.set_num_threads)
