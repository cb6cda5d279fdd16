"""Graded tests for Lab 9: each metric on hand-made streams, goodput, a comparison with corolab.bench on
streams recorded from its fake server, and the coordinated-omission trap."""

from __future__ import annotations

import asyncio
import math

import pytest

from corolab.labs.grading import points


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@points(2, hint="TTFT = chunks[0] - sent (None without chunks); E2EL = end - sent (None when end is None). "
                "E2EL ends at the last byte, which may come after the last content chunk.")
def test_ttft_and_e2el(student) -> None:
    s = student.Stream(sent=10.0, chunks=[10.25, 10.30, 10.40], end=10.45, tokens=3)
    assert close(student.ttft(s), 0.25)
    assert close(student.e2el(s), 0.45)
    empty = student.Stream(sent=1.0, chunks=[], end=1.2, tokens=0)     # finished, said nothing
    assert student.ttft(empty) is None and close(student.e2el(empty), 0.2)
    failed = student.Stream(sent=1.0, chunks=[1.1], end=None, tokens=1)
    assert student.e2el(failed) is None


@points(2, hint="TPOT = (E2EL - TTFT) / (tokens - 1), with tokens from the server's usage, not the number "
                "of chunks; None when tokens < 2 or a time is missing.")
def test_tpot_counts_tokens_not_chunks(student) -> None:
    # five chunks carrying ten tokens: counting chunks would overstate TPOT more than twice
    s = student.Stream(sent=0.0, chunks=[0.2, 0.3, 0.4, 0.5, 0.6], end=0.65, tokens=10)
    assert close(student.tpot(s), (0.65 - 0.2) / 9)
    assert student.tpot(student.Stream(sent=0.0, chunks=[0.2], end=0.2, tokens=1)) is None
    assert student.tpot(student.Stream(sent=0.0, chunks=[0.2, 0.3], end=None, tokens=2)) is None


@points(1, hint="ITL is the list of gaps between successive chunks: [b - a for a, b in zip(c, c[1:])].")
def test_itl_gaps(student) -> None:
    s = student.Stream(sent=0.0, chunks=[0.1, 0.15, 0.35, 0.36], end=0.4, tokens=4)
    assert [round(g, 9) for g in student.itl(s)] == [0.05, 0.2, 0.01]
    assert student.itl(student.Stream(sent=0.0, chunks=[0.1], end=0.1, tokens=1)) == []


@points(2, hint="Sort; k = (n - 1) * p / 100; interpolate between xs[floor(k)] and xs[ceil(k)]. "
                "An empty list gives math.nan.")
def test_percentile_interpolates(student) -> None:
    assert close(student.percentile([4.0, 1.0, 3.0, 2.0], 50), 2.5)
    assert close(student.percentile([1.0, 2.0, 3.0, 4.0], 90), 3.7)
    assert close(student.percentile([1.0, 2.0, 3.0, 4.0], 99), 3.97)
    assert student.percentile([7.0], 99) == 7.0
    assert math.isnan(student.percentile([], 50))


@points(2, hint="Percentiles cover finished requests only; ITL pools every gap of every request (not a mean "
                "of per-request means); the window starts at the first request sent, failed ones included.")
def test_summary_pools_itl_and_skips_failures(student) -> None:
    streams = [
        student.Stream(sent=0.0, chunks=[0.5, 0.6], end=0.6, tokens=2),               # one gap of 0.1
        student.Stream(sent=1.0, chunks=[1.1, 1.2, 1.3, 1.4, 1.5], end=1.5, tokens=5),  # four gaps of 0.1
        student.Stream(sent=2.0, chunks=[2.2, 3.2], end=3.2, tokens=2),               # one gap of 1.0
        student.Stream(sent=-1.0, chunks=[9.0], end=None, tokens=1),                  # failed: never counts
    ]
    out = student.summary(streams)
    assert out["completed"] == 3 and out["failed"] == 1
    assert close(out["duration"], 3.2 - (-1.0))
    assert close(out["output_throughput"], 9 / 4.2)
    assert close(out["itl"]["mean"], (5 * 0.1 + 1.0) / 6)     # pooled: 0.25, not (0.1 + 0.1 + 1.0) / 3
    assert close(out["itl"]["median"], 0.1)
    assert close(out["ttft"]["median"], 0.2) and close(out["ttft"]["mean"], (0.5 + 0.1 + 0.2) / 3)
    assert close(out["e2el"]["p90"], 0.6 + (1.2 - 0.6) * 0.8)
    assert out["goodput"] is None


@points(3, hint="Good = finished, TTFT <= limit, and (TPOT <= limit or no TPOT at all); goodput = good "
                "requests / window seconds, not a fraction of the requests.")
def test_goodput(student) -> None:
    # binary fractions (1/8 s, 1/4 s, ...) so that "exactly at the limit" is exact in floating point
    streams = [
        student.Stream(sent=0.0, chunks=[0.125, 0.25, 0.375], end=0.375, tokens=3),  # TTFT 1/8, TPOT 1/8
        student.Stream(sent=0.0, chunks=[0.25, 0.375], end=0.375, tokens=2),         # TTFT 1/4, TPOT 1/8
        student.Stream(sent=1.0, chunks=[1.125, 1.625], end=1.625, tokens=2),        # TPOT 1/2: slow
        student.Stream(sent=1.0, chunks=[1.0625], end=1.0625, tokens=1),             # one token, no TPOT
        student.Stream(sent=1.5, chunks=[1.875, 2.0], end=2.0, tokens=2),            # TTFT 3/8: slow
        student.Stream(sent=1.5, chunks=[1.625], end=None, tokens=1),                # failed
    ]
    # limits are inclusive: the first two meet TTFT <= 1/4 and TPOT <= 1/8 exactly; the window is 2 s
    assert close(student.goodput(streams, 0.25, 0.125), 3 / 2.0)
    assert close(student.goodput(streams, None, 0.125), 4 / 2.0)
    assert close(student.goodput(streams, 0.25, None), 4 / 2.0)
    assert close(student.summary(streams, ttft_limit=0.125, tpot_limit=1.0)["goodput"], 3 / 2.0)


def record_from_fake_server():
    """Stream replies with known shapes from corolab.bench's fake server and keep its records."""
    from corolab.bench import BenchConfig, run_bench
    from corolab.bench.fakeserver import FakeChatServer, chunk, usage

    served = 0

    async def varied(request, reply):
        nonlocal served
        served += 1
        n = served
        await asyncio.sleep(0.004 * (n % 4))                # a different prefill per request
        reply.start_stream()
        pieces = 1 if n % 5 == 0 else 3 + n % 3             # every fifth reply is a single chunk
        for i in range(pieces):
            if i:
                await asyncio.sleep(0.002 * (1 + (n + i) % 3))
            reply.event(chunk(f"t{i} t{i}' "))              # two tokens per chunk
            await reply.flush()
        await asyncio.sleep(0.003)                          # the last byte comes after the last token
        reply.event(chunk(usage=usage(prompt_tokens=4, completion_tokens=1 if pieces == 1 else 2 * pieces)))
        reply.event("[DONE]")
        reply.end_stream()

    async def main():
        async with FakeChatServer(varied) as server:
            config = BenchConfig(url=server.url, concurrency=3, requests=24, progress=False,
                                 ttft_limit=0.008, tpot_limit=0.0026)
            return (await run_bench(config)).runs[0]

    return asyncio.run(main())


@points(3, hint="Use the same definitions as the package: corolab.bench.metrics.summarize. Tokens come "
                "from usage; E2EL ends at the last byte; percentiles interpolate; goodput per window second.")
def test_matches_corolab_bench_on_its_fake_server(student) -> None:
    run = record_from_fake_server()
    assert run.summary["completed"] == 24
    streams = [student.Stream(sent=r.start, chunks=list(r.chunk_times), end=r.end, tokens=r.output_tokens)
               for r in run.records]
    mine = student.summary(streams, ttft_limit=0.008, tpot_limit=0.0026)
    theirs = run.summary
    assert mine["completed"] == theirs["completed"] and close(mine["duration"], theirs["duration"])
    assert close(mine["output_throughput"], theirs["output_throughput"])
    assert close(mine["goodput"], theirs["goodput"])
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for key in ("mean", "median", "p90", "p99"):
            assert close(mine[metric][key], theirs[metric][key]), (metric, key)


def open_loop_behind_a_freeze(student):
    """An open-loop schedule (one request every 50 ms for 3 s) sent over a single connection to a server
    that answers in 10 ms but freezes from t=1 s to t=2 s. A request is sent at its due time, or when the
    connection frees up, whichever is later: so requests due during the freeze are sent late."""
    streams, free_at = [], 0.0
    for i in range(60):
        due = 0.05 * i
        sent = max(due, free_at)
        begins = 2.0 if 1.0 <= sent < 2.0 else sent     # the frozen server starts work at t=2
        chunks = [begins + 0.006, begins + 0.008, begins + 0.010]
        free_at = begins + 0.010
        streams.append(student.Stream(sent=sent, chunks=chunks, end=free_at, tokens=3, due=due))
    return streams


@points(3, hint="With from_schedule=True, measure TTFT and E2EL from s.due, the time the schedule meant to "
                "send the request; TPOT and ITL do not depend on the start, so they must not change.")
def test_coordinated_omission_needs_the_schedule(student) -> None:
    streams = open_loop_behind_a_freeze(student)
    naive = student.summary(streams)
    honest = student.summary(streams, from_schedule=True)
    slow_naive = sum(student.e2el(s) > 0.1 for s in streams)
    slow_honest = sum(student.e2el(s, from_schedule=True) > 0.1 for s in streams)
    print(f"slower than 100 ms: {slow_naive} measured from the send, {slow_honest} from the schedule")
    assert slow_naive == 1                            # only the request caught in the freeze
    assert slow_honest >= 20                          # everyone who arrived during it waited
    assert naive["e2el"]["p90"] < 0.02 < 0.5 < honest["e2el"]["p90"]
    assert honest["ttft"]["p90"] > 0.5
    for s in streams:
        assert close(student.e2el(s, from_schedule=True), s.end - s.due)
        assert close(student.ttft(s, from_schedule=True), s.chunks[0] - s.due)
    for key in ("mean", "median", "p90", "p99"):
        assert close(naive["tpot"][key], honest["tpot"][key])
        assert close(naive["itl"][key], honest["itl"][key])
    closed = student.Stream(sent=0.0, chunks=[0.1], end=0.2, tokens=1)  # no schedule: measured from sent
    assert close(student.e2el(closed, from_schedule=True), 0.2)
