"""Load shapes and bounds: closed loop holds exactly C in flight, open loop arrives as a seeded Poisson
process (checked in fake time), runs stop by themselves, and interruption keeps what finished."""

import asyncio
import signal
import statistics
import threading

import pytest
from bench_support import FakeTime

from corolab.bench import BenchConfig, run_bench, run_bench_sync
from corolab.bench.dataset import synthetic_prompts
from corolab.bench.fakeserver import FakeChatServer, instant_reply
from corolab.bench.loops import Bounds, InFlight, closed_loop, open_loop, poisson_gaps
from corolab.bench.records import RequestRecord


def config(url, **kw):
    return BenchConfig(url=url, progress=False, heartbeat_interval=0, **kw)


@pytest.mark.parametrize("c", [1, 4, 16])
async def test_closed_loop_keeps_exactly_c_in_flight_at_the_server(c):
    """Every request waits at the server until C are there at once; with fewer the run would never end
    (the timeout turns that into a failure), with more the peak would exceed C."""
    full = asyncio.Event()

    async def handler(request, reply):
        if server.in_flight >= c:
            full.set()
        await full.wait()
        await instant_reply(request, reply)

    server = FakeChatServer(handler)
    async with server:
        async with asyncio.timeout(20):
            result = await run_bench(config(server.url, concurrency=c, requests=5 * c, max_tokens=2))
    [run] = result.runs
    assert server.peak == c == run.peak_in_flight
    assert run.summary["completed"] == 5 * c == server.served


async def test_sweep_runs_each_level_in_order():
    async with FakeChatServer() as server:
        result = await run_bench(config(server.url, concurrency=[1, 2, 8], requests=16, max_tokens=3))
    assert [(r.kind, r.level) for r in result.runs] == [("concurrency", 1), ("concurrency", 2), ("concurrency", 8)]
    assert all(r.summary["completed"] == 16 for r in result.runs)
    assert [r.peak_in_flight for r in result.runs] == [1, 2, 8]


def instant_send(t: FakeTime):
    async def send(i, prompt):
        r = RequestRecord(index=i, start=t())
        r.add_content(t(), "x")
        r.finish(t())
        return r

    return send


async def test_open_loop_inter_arrivals_are_poisson_at_the_rate():
    t = FakeTime()
    arrivals, records = [], []
    n, rate = 4000, 4.0
    await open_loop(instant_send(t), synthetic_prompts(8), Bounds(n, None, t), rate, 64, records,
                    seed=7, clock=t, sleep=t.sleep, arrivals=arrivals)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(records) == n and arrivals[0] == 0.0
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.05)  # standard error is 1.6% of the mean at n=4000
    assert statistics.stdev(gaps) / mean == pytest.approx(1.0, abs=0.06)  # exponential: CV = 1
    assert sum(g < 1 / rate for g in gaps) / len(gaps) == pytest.approx(1 - 2.718281828 ** -1, abs=0.03)
    again = []
    await open_loop(instant_send(FakeTime()), synthetic_prompts(8), Bounds(50, None, t), rate, 64, [],
                    seed=7, clock=FakeTime(), sleep=FakeTime().sleep, arrivals=again)
    assert gaps[:10] == pytest.approx([b - a for a, b in zip(again, again[1:])][:10])  # seeded


def test_poisson_gaps_differ_by_seed():
    a, b = poisson_gaps(2.0, 1), poisson_gaps(2.0, 2)
    assert [next(a) for _ in range(5)] != [next(b) for _ in range(5)]


async def test_open_loop_cap_bounds_in_flight():
    t = FakeTime()
    release = asyncio.Event()
    started = 0

    async def send(i, prompt):
        nonlocal started
        started += 1
        if started == 3:
            release.set()  # the cap is full; let them all go
        await release.wait()
        return RequestRecord(index=i, start=0.0, end=0.0)

    in_flight, records = InFlight(), []
    await open_loop(send, synthetic_prompts(2), Bounds(30, None, t), 1000.0, 3, records,
                    clock=t, sleep=t.sleep, in_flight=in_flight)
    assert in_flight.peak == 3 and len(records) == 30


async def test_duration_bounds_a_run_in_fake_time():
    t = FakeTime()

    async def send(i, prompt):
        r = RequestRecord(index=i, start=t())
        await t.sleep(1.0)  # each request takes one fake second
        r.finish(t())
        return r

    records = []
    await closed_loop(send, synthetic_prompts(2), Bounds(None, 10.0, t), 1, records)
    assert len(records) == 10 and t.now == 10.0


async def test_open_loop_duration_in_fake_time():
    t = FakeTime()
    records, arrivals = [], []
    await open_loop(instant_send(t), synthetic_prompts(2), Bounds(None, 100.0, t), 5.0, 8, records,
                    clock=t, sleep=t.sleep, arrivals=arrivals)
    assert all(a < 100.0 for a in arrivals) and 400 < len(records) < 600


def test_unbounded_config_is_refused():
    with pytest.raises(ValueError, match="bounded"):
        BenchConfig(requests=None, duration=None).check()
    with pytest.raises(ValueError, match="not both"):
        BenchConfig(concurrency=2, rate=1.0).check()


def hanging_after(k: int, hanging: asyncio.Event | threading.Event, on_hang=lambda: None):
    """Answers ``k`` requests at once, then holds every later one until the server stops."""
    count = 0
    never = asyncio.Event()

    async def handler(request, reply):
        nonlocal count
        count += 1
        if count > k:
            hanging.set()
            on_hang()
            await never.wait()
        await instant_reply(request, reply)

    return handler


async def test_cancel_returns_partial_results():
    hanging = asyncio.Event()
    async with FakeChatServer(hanging_after(3, hanging)) as server:
        task = asyncio.create_task(run_bench(config(server.url, concurrency=[1, 4], requests=10, max_tokens=2)))
        await hanging.wait()
        task.cancel()
        result = await task
    [run] = result.runs  # the sweep stopped at its first level
    assert result.interrupted and run.interrupted
    assert len(run.records) == 3 and run.summary["completed"] == 3
    assert run.cancelled_in_flight == 1 and run.summary["failed"] == 0
    assert "interrupted" in result.table()


async def test_enclosing_timeout_ends_quietly_with_the_partial_result():
    hanging = asyncio.Event()
    async with FakeChatServer(hanging_after(2, hanging)) as server:
        async with asyncio.timeout(0.2):  # the server hangs for good: only the timeout ends the run
            result = await run_bench(config(server.url, concurrency=1, requests=10, max_tokens=2))
    assert result.interrupted and result.runs[0].summary["completed"] == 2


def test_sync_run_survives_ctrl_c_with_partial_results():
    """SIGINT while the third request hangs: run_bench_sync returns what finished instead of raising."""
    hanging = threading.Event()
    loop = asyncio.new_event_loop()
    main = threading.main_thread().ident  # the signal must reach the thread that runs the bench loop
    server = FakeChatServer(hanging_after(2, hanging, on_hang=lambda: signal.pthread_kill(main, signal.SIGINT)))
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        result = run_bench_sync(config(server.url, concurrency=1, requests=10, max_tokens=2, timeout=30))
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert hanging.is_set()
    run = result.runs[0]
    assert result.interrupted and run.summary["completed"] == 2
    assert run.summary["failed"] == 0 and run.cancelled_in_flight == 1  # cut off, not timed out


async def test_monitor_warns_when_the_client_blocks_its_own_loop():
    import time

    from corolab.bench.loops import LoopMonitor

    with LoopMonitor(0.005) as monitor:
        await asyncio.sleep(0)  # the heartbeat takes its first step and asks to wake in 5 ms
        time.sleep(0.05)  # a CPU-bound client: the loop cannot wake anyone for 50 ms
    report = monitor.report()
    assert report["loop_lag_max"] >= 0.04
    assert any("lagged" in w for w in report["warnings"])

    with LoopMonitor(0.5) as calm:
        await asyncio.sleep(0)
    assert calm.report()["warnings"] == []
