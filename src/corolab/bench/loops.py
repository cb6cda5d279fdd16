"""Load shapes. Closed loop: C workers, each sends its next request when the last one ends, so exactly C
are in flight. Open loop: requests arrive as a Poisson process at a rate, whatever the server is doing,
which is how users behave and what exposes queueing; a cap bounds how many may be in flight.

Drivers take the request function, the clock and the sleep as arguments: the tests drive them with a
fake clock and a fake sleep, so Poisson statistics are checked over thousands of arrivals in no time.
Finished records go into the caller's list as they finish, so an interrupted run keeps them.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

from .dataset import Prompt
from .records import RequestRecord

SendFn = Callable[[int, Prompt], Awaitable[RequestRecord]]


class Bounds:
    """When to stop issuing requests: after ``requests`` of them, or once ``duration`` has passed."""

    def __init__(self, requests: int | None, duration: float | None, clock: Callable[[], float]):
        self.requests, self.clock = requests, clock
        self.deadline = None if duration is None else clock() + duration
        self.issued = 0

    def take(self) -> int | None:
        """The next request index, or None when the run is over."""
        if self.requests is not None and self.issued >= self.requests:
            return None
        if self.deadline is not None and self.clock() >= self.deadline:
            return None
        self.issued += 1
        return self.issued - 1


class InFlight:
    """Counts requests in flight; the peak proves the closed loop's promise, and ``cancelled`` says how
    many were cut off by an interruption (their records are lost: they never finished)."""

    def __init__(self) -> None:
        self.now = self.peak = self.cancelled = 0

    def __enter__(self):
        self.now += 1
        self.peak = max(self.peak, self.now)

    def __exit__(self, exc_type, exc, tb):
        self.now -= 1
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError | KeyboardInterrupt):
            self.cancelled += 1


async def closed_loop(send: SendFn, prompts: Sequence[Prompt], bounds: Bounds, concurrency: int,
                      records: list[RequestRecord], on_done: Callable[[RequestRecord], None] = lambda r: None,
                      in_flight: InFlight | None = None) -> None:
    in_flight = in_flight or InFlight()

    async def worker() -> None:
        while (i := bounds.take()) is not None:
            with in_flight:
                rec = await send(i, prompts[i % len(prompts)])
            records.append(rec)
            on_done(rec)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())


def poisson_gaps(rate: float, seed: int) -> Iterator[float]:
    """Inter-arrival times of a Poisson process: exponential with mean 1/rate, from a seeded RNG."""
    rng = random.Random(seed)
    while True:
        yield rng.expovariate(rate)


async def open_loop(send: SendFn, prompts: Sequence[Prompt], bounds: Bounds, rate: float, max_concurrency: int,
                    records: list[RequestRecord], on_done: Callable[[RequestRecord], None] = lambda r: None,
                    *, seed: int = 0, clock: Callable[[], float] = time.perf_counter,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                    arrivals: list[float] | None = None, in_flight: InFlight | None = None) -> None:
    """The first request goes at once; each next one after an exponential gap, measured from the
    scheduled time (not from when the sleep returned), so a late wake-up does not lower the rate."""
    cap = asyncio.Semaphore(max_concurrency)
    in_flight = in_flight or InFlight()
    gaps = poisson_gaps(rate, seed)

    async def one(i: int) -> None:
        async with cap:
            with in_flight:
                rec = await send(i, prompts[i % len(prompts)])
        records.append(rec)
        on_done(rec)

    async with asyncio.TaskGroup() as tg:
        due = clock()
        while True:
            if (delay := due - clock()) > 0:
                await sleep(delay)
            if (i := bounds.take()) is None:
                break
            if arrivals is not None:
                arrivals.append(due)
            tg.create_task(one(i))
            due += next(gaps)


class LoopMonitor:
    """Is the client the bottleneck? A heartbeat task asks to wake every ``interval`` seconds and records
    how late it woke: that lag is added to every timestamp the client takes. Process CPU time over wall
    time near 1.0 (one core) means the client cannot go faster, whatever the server can do."""

    LAG_WARN = 0.010  # p99 lag (s) above which latencies include the client's own delay
    CPU_WARN = 0.90  # fraction of one core

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None
        self._due: float | None = None

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lags.append(max(loop.time() - self._due, 0.0))

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        if self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._beat())
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        if self._task is not None:
            self._task.cancel()
            overdue = asyncio.get_running_loop().time() - self._due if self._due is not None else 0.0
            if overdue > 0:  # a beat still waiting past its time was delayed too: count it
                self.lags.append(overdue)

    def report(self) -> dict:
        lags = sorted(self.lags)
        p99 = lags[min(int(0.99 * len(lags)), len(lags) - 1)] if lags else 0.0
        cpu = self.cpu / self.wall if self.wall > 0 else 0.0
        warnings = []
        if p99 > self.LAG_WARN:
            warnings.append(f"client event loop lagged {p99 * 1e3:.1f} ms (p99): latencies include the "
                            "tester's own delay; lower the load or run the tester on its own core")
        if cpu > self.CPU_WARN and self.wall >= 0.5:  # shorter runs are start-up cost, not a verdict
            warnings.append(f"client used {cpu:.0%} of a CPU core: the tester, not the server, may be the "
                            "bottleneck (see `corolab bench --self-test` for its ceiling)")
        return {
            "loop_lag_mean": statistics.fmean(lags) if lags else 0.0,
            "loop_lag_p99": p99,
            "loop_lag_max": lags[-1] if lags else 0.0,
            "client_cpu": cpu,
            "seconds": self.wall,      # this monitor's span: one load level, not the whole sweep
            "beats": len(lags),
            "warnings": warnings,
        }
