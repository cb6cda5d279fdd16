"""Run a load test: one run per concurrency or rate in the config, each bounded, each reported.

``await run_bench(config)`` in a notebook (top-level await), ``run_bench_sync(config)`` in a script.
Interrupting (Ctrl-C, the notebook's stop button, a cancelling timeout) stops at once and still returns
what finished: records of requests that completed, with ``interrupted=True`` on the run that was cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from dataclasses import dataclass, field

from .clients import make_client
from .config import BenchConfig
from .dataset import prompts_for
from .loops import Bounds, InFlight, LoopMonitor, closed_loop, open_loop
from .metrics import summarize
from .records import RequestRecord


@dataclass
class RunResult:
    """One load level: its records, their summary, and what the client measured about itself."""

    kind: str  # "concurrency" or "rate"
    level: float
    records: list[RequestRecord]
    summary: dict
    client: dict = field(default_factory=dict)
    interrupted: bool = False
    cancelled_in_flight: int = 0
    peak_in_flight: int = 0

    @property
    def warnings(self) -> list[str]:
        return list(self.client.get("warnings", []))

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("kind", "level", "summary", "client", "interrupted",
                                                "cancelled_in_flight", "peak_in_flight")}


@dataclass
class BenchResult:
    """A sweep: one :class:`RunResult` per level, plus the config that produced them."""

    config: dict
    runs: list[RunResult]

    @property
    def interrupted(self) -> bool:
        return any(r.interrupted for r in self.runs)

    def table(self) -> str:
        from .report import summary_table

        return summary_table(self)

    def to_json(self, path) -> None:
        from .report import write_json

        write_json(self, path)

    def to_csv(self, path) -> None:
        from .report import write_csv

        write_csv(self, path)

    def plot_cdfs(self):
        """Latency CDFs (TTFT, TPOT, ITL, E2EL), one curve per run: a matplotlib Figure."""
        from .plots import latency_cdfs

        return latency_cdfs(self)

    def plot_sweep(self):
        """Throughput and TTFT against the swept concurrency or rate: a matplotlib Figure."""
        from .plots import sweep

        return sweep(self)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython shows the table, not a wall of records
        p.text(self.table())


async def run_level(config: BenchConfig, kind: str, level: float, prompts, runs: list[RunResult]) -> RunResult:
    """One run at one load level. The RunResult is appended to ``runs`` before the load starts, so a
    cancelled sweep still holds the partial run."""
    records: list[RequestRecord] = []
    in_flight = InFlight()
    run = RunResult(kind, level, records, {})
    runs.append(run)
    pool_size = int(level) if kind == "concurrency" else config.max_concurrency
    client = make_client(config, pool_size)
    bar = _progress(config, kind, level, len(runs))
    on_done = bar.done if bar else (lambda rec: None)
    bounds = Bounds(config.requests, config.duration, config.clock)
    monitor = LoopMonitor(config.heartbeat_interval)
    try:
        with monitor:
            if kind == "concurrency":
                await closed_loop(client.request, prompts, bounds, int(level), records, on_done, in_flight)
            else:
                await open_loop(client.request, prompts, bounds, level, config.max_concurrency, records, on_done,
                                seed=config.seed, clock=config.clock, sleep=config.sleep, in_flight=in_flight)
    except (asyncio.CancelledError, KeyboardInterrupt):
        run.interrupted = True
        raise
    finally:
        run.peak_in_flight, run.cancelled_in_flight = in_flight.peak, in_flight.cancelled
        if bar:
            bar.close()
        await asyncio.shield(client.aclose())
        run.client = monitor.report()
        run.summary = summarize(records, ttft_limit=config.ttft_limit, tpot_limit=config.tpot_limit)
    return run


def _progress(config: BenchConfig, kind: str, level: float, index: int):
    """The level's progress bar (None with ``progress=False``); ``index`` counts levels from 1."""
    if not config.progress:
        return None
    from .progress import LevelProgress, level_label

    return LevelProgress(config, level_label(kind, level, index, len(config.levels())))


async def run_bench(config: BenchConfig) -> BenchResult:
    """Run every level in the config, in order, and return all results.

    On cancellation the partial result is returned instead of raising: a load test that was stopped
    by hand should still say what it saw. (The task's cancel request is withdrawn with ``uncancel`` so an
    enclosing ``asyncio.timeout`` ends quietly with the partial result.)
    """
    config.check()
    prompts = prompts_for(config)
    runs: list[RunResult] = []
    result = BenchResult(config.describe(), runs)
    try:
        with ctrl_c_cancels(asyncio.current_task()):
            for kind, level in config.levels():
                await run_level(config, kind, level, prompts, runs)
    except (asyncio.CancelledError, KeyboardInterrupt):
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):
            while task.uncancel() > 0:
                pass
    return result


@contextlib.contextmanager
def ctrl_c_cancels(task: asyncio.Task | None):
    """While the bench runs, the first Ctrl-C (SIGINT) cancels it cleanly; a second one does what it did
    before (raise KeyboardInterrupt). Without this a SIGINT would surface as KeyboardInterrupt wherever
    the loop happened to be, often inside the loop's own machinery, and the partial result would be lost.
    Jupyter's interrupt button sends the same signal to the kernel, so notebooks get the same behaviour."""
    if task is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGINT)
    pressed = False

    def on_sigint(signum, frame):
        nonlocal pressed
        if pressed:  # a second Ctrl-C: the user means it
            if callable(previous):
                previous(signum, frame)
                return
            raise KeyboardInterrupt
        pressed = True
        loop.call_soon_threadsafe(task.cancel)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_bench_sync(config: BenchConfig) -> BenchResult:
    """For scripts: run the bench in a fresh event loop; Ctrl-C returns the partial result."""
    holder: list[BenchResult] = []

    async def main() -> None:
        holder.append(await run_bench(config))

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        if not holder:
            raise
    return holder[0]


async def self_test(config: BenchConfig | None = None) -> BenchResult:
    """Measure the tester's own ceiling: the same load against an in-process instant server.

    The server shares this process and its event loop, so the figure is a floor on what the client alone
    can do; a real run far below it is limited by the server, a run near it by the tester.
    """
    from .fakeserver import FakeChatServer

    config = config or BenchConfig(concurrency=64, requests=4000, max_tokens=8, prompt_tokens=8)
    if config.mode == "ws":
        raise ValueError("the self-test server speaks HTTP; use mode 'stream' or 'nonstream'")
    async with FakeChatServer() as server:
        config.url = server.url
        return await run_bench(config)

