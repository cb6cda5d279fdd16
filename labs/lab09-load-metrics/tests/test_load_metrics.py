"""Graded tests for Lab 9: each metric on hand-made streams, goodput, a comparison with corolab.bench on
streams recorded from its fake server, and the coordinated-omission trap.

Each test draws its streams (send times, chunk times, token counts, schedules) from ``rng``, a new seed
for every grading run, and ``observe``s the numbers your functions computed from them, rounded to the
microsecond. The grader compares those with the reference solution's.
"""

from __future__ import annotations

import asyncio
import math
import statistics

from corolab.labs.grading import points

KEYS = ("completed", "failed", "duration", "output_throughput", "goodput", "ttft", "tpot", "itl", "e2el")
STATS = ("mean", "median", "p90", "p99")


def close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def ms(rng, lo: int, hi: int) -> float:
    """A random time between ``lo`` and ``hi`` milliseconds, in seconds."""
    return rng.randint(lo, hi) / 1000


def rounded(value: object) -> object:
    """``value`` with every float rounded to the microsecond, for observe()."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {key: rounded(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


def reported(out: dict) -> dict:
    """The keys of a summary that the task names (any extra ones are yours)."""
    return rounded({key: out.get(key) for key in KEYS})


def percentile(values: list[float], p: int) -> float:
    """The standard library's version of numpy's default percentile, to check yours against."""
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def random_stream(student, rng, sent: float, chunks: int, tokens: int | None = None):
    """A finished stream: first chunk 50-400 ms after ``sent``, then 5-80 ms gaps, last byte 1-20 ms later."""
    times = [sent + ms(rng, 50, 400)]
    while len(times) < chunks:
        times.append(times[-1] + ms(rng, 5, 80))
    end = times[-1] + ms(rng, 1, 20)
    return student.Stream(sent=sent, chunks=times, end=end, tokens=chunks if tokens is None else tokens)


@points(2, hint="TTFT = chunks[0] - sent (None without chunks); E2EL = end - sent (None when end is None). "
                "E2EL ends at the last byte, which may come after the last content chunk.")
def test_ttft_and_e2el(student, rng, observe) -> None:
    sent = ms(rng, 0, 100_000)
    s = random_stream(student, rng, sent, rng.randint(2, 5))
    empty = student.Stream(sent=sent, chunks=[], end=sent + ms(rng, 10, 500), tokens=0)  # finished, said nothing
    failed = student.Stream(sent=sent, chunks=s.chunks[:1], end=None, tokens=1)
    got = [student.ttft(s), student.e2el(s), student.ttft(empty), student.e2el(empty), student.e2el(failed)]
    observe(rounded(got))
    assert close(got[0], s.chunks[0] - sent), \
        f"TTFT should be the first chunk minus sent, {s.chunks[0] - sent:.3f}; got {got[0]}"
    assert close(got[1], s.end - sent), f"E2EL should run to the last byte, {s.end - sent:.3f}; got {got[1]}"
    assert got[2] is None, f"a stream without content chunks has no TTFT (None); got {got[2]}"
    assert close(got[3], empty.end - sent), \
        f"a finished stream without chunks still has an E2EL, {empty.end - sent:.3f}; got {got[3]}"
    assert got[4] is None, f"a failed stream (end=None) has no E2EL (None); got {got[4]}"


@points(2, hint="TPOT = (E2EL - TTFT) / (tokens - 1), with tokens from the server's usage, not the number "
                "of chunks; None when tokens < 2 or a time is missing.")
def test_tpot_counts_tokens_not_chunks(student, rng, observe) -> None:
    chunks = rng.randint(3, 6)
    tokens = chunks * rng.randint(2, 3)           # several tokens per chunk: counting chunks overstates TPOT
    s = random_stream(student, rng, ms(rng, 0, 1000), chunks, tokens)
    one = random_stream(student, rng, 0.0, 1, tokens=1)
    failed = random_stream(student, rng, 0.0, 2, tokens=2)
    failed.end = None
    got = [student.tpot(s), student.tpot(one), student.tpot(failed)]
    observe(rounded(got))
    want = (s.end - s.chunks[0]) / (tokens - 1)
    assert close(got[0], want), f"{chunks} chunks carrying {tokens} tokens: TPOT should be {want:.6f}; got {got[0]}"
    assert got[1] is None, f"a one-token reply has no TPOT (None); got {got[1]}"
    assert got[2] is None, f"a failed request has no TPOT (None); got {got[2]}"


@points(1, hint="ITL is the list of gaps between successive chunks: [b - a for a, b in zip(c, c[1:])].")
def test_itl_gaps(student, rng, observe) -> None:
    s = random_stream(student, rng, ms(rng, 0, 1000), rng.randint(3, 7))
    single = random_stream(student, rng, 0.0, 1)
    got, alone = student.itl(s), student.itl(single)
    observe(rounded([got, alone]))
    want = [b - a for a, b in zip(s.chunks, s.chunks[1:])]
    assert len(got) == len(want) and all(map(close, got, want)), \
        f"expected the {len(want)} gaps {rounded(want)}, got {rounded(got)}"
    assert alone == [], f"a single chunk has no gaps; got {alone}"


@points(2, hint="Sort; k = (n - 1) * p / 100; interpolate between xs[floor(k)] and xs[ceil(k)]. "
                "An empty list gives math.nan.")
def test_percentile_interpolates(student, rng, observe) -> None:
    values = [ms(rng, 1, 5000) for _ in range(rng.randint(4, 9))]
    ps = [50, 90, 99, rng.randint(1, 98)]
    got = [student.percentile(values, p) for p in ps]
    one = ms(rng, 1, 5000)
    single, empty = student.percentile([one], 99), student.percentile([], 50)
    observe(rounded([got, single, math.isnan(empty)]))
    for p, mine in zip(ps, got):
        want = percentile(values, p)
        assert close(mine, want), f"p{p} of {sorted(values)} should be {want:.6f}; got {mine}"
    assert single == one, f"any percentile of [{one}] is {one}; got {single}"
    assert math.isnan(empty), f"the percentile of an empty list should be math.nan; got {empty}"


@points(2, hint="Percentiles cover finished requests only; ITL pools every gap of every request (not a mean "
                "of per-request means); the window starts at the first request sent, failed ones included.")
def test_summary_pools_itl_and_skips_failures(student, rng, observe) -> None:
    lengths = rng.sample(range(2, 8), rng.randint(3, 5))       # chunk counts, all different
    ok = [random_stream(student, rng, ms(rng, 0, 2000), n) for n in lengths]
    failed = student.Stream(sent=-ms(rng, 1, 1000), chunks=[ms(rng, 0, 100)], end=None, tokens=1)
    streams = ok + [failed]
    rng.shuffle(streams)
    out = student.summary(streams)
    observe(reported(out))
    duration = max(s.end for s in ok) - failed.sent
    gaps = [b - a for s in ok for a, b in zip(s.chunks, s.chunks[1:])]
    assert (out["completed"], out["failed"]) == (len(ok), 1), \
        f"expected {len(ok)} completed and 1 failed, got {out['completed']} and {out['failed']}"
    assert close(out["duration"], duration), \
        f"the window runs from the first request sent (a failed one) to the last byte, {duration:.3f} s; " \
        f"got {out['duration']}"
    tokens = sum(s.tokens for s in ok)
    assert close(out["output_throughput"], tokens / duration), \
        f"{tokens} tokens over {duration:.3f} s is {tokens / duration:.4f}/s; got {out['output_throughput']}"
    assert close(out["itl"]["mean"], statistics.fmean(gaps)), \
        f"ITL pools all {len(gaps)} gaps: mean {statistics.fmean(gaps):.6f}; got {out['itl']['mean']}"
    ttfts = [s.chunks[0] - s.sent for s in ok]
    assert close(out["ttft"]["median"], statistics.median(ttfts)), \
        f"median TTFT of the finished requests is {statistics.median(ttfts):.6f}; got {out['ttft']['median']}"
    e2els = [s.end - s.sent for s in ok]
    assert close(out["e2el"]["p90"], percentile(e2els, 90)), \
        f"p90 E2EL of the finished requests is {percentile(e2els, 90):.6f}; got {out['e2el']['p90']}"
    assert out["goodput"] is None, f"with no limits, goodput is None; got {out['goodput']}"


@points(3, hint="Good = finished, TTFT <= limit, and (TPOT <= limit or no TPOT at all); goodput = good "
                "requests / window seconds, not a fraction of the requests.")
def test_goodput(student, rng, observe) -> None:
    # Times are whole multiples of 1/64 s, so that "exactly at the limit" is exact in floating point.
    u = 1 / 64
    ttft_limit, tpot_limit = rng.randint(4, 10) * u, rng.randint(2, 6) * u

    def stream(ttft: float, tpot: float, tokens: int, failed: bool = False):
        sent = rng.randint(0, 128) * u
        chunks = [sent + ttft + i * tpot for i in range(tokens)]
        return student.Stream(sent=sent, chunks=chunks, end=None if failed else chunks[-1], tokens=tokens)

    kinds = {
        "at both limits": lambda: stream(ttft_limit, tpot_limit, rng.randint(2, 4)),
        "under both": lambda: stream(ttft_limit - rng.randint(1, 3) * u, tpot_limit - u, rng.randint(2, 4)),
        "slow TPOT": lambda: stream(ttft_limit - u, tpot_limit + rng.randint(1, 3) * u, rng.randint(2, 4)),
        "one token": lambda: stream(ttft_limit - u, 0, 1),
        "slow TTFT": lambda: stream(ttft_limit + rng.randint(1, 3) * u, tpot_limit, rng.randint(2, 4)),
        "failed": lambda: stream(ttft_limit - u, tpot_limit, 2, failed=True),
    }
    counts = {kind: rng.randint(1, 2) for kind in kinds}
    streams = [make() for kind, make in kinds.items() for _ in range(counts[kind])]
    rng.shuffle(streams)
    window = max(s.end for s in streams if s.end is not None) - min(s.sent for s in streams)
    both = (counts["at both limits"] + counts["under both"] + counts["one token"]) / window
    only_tpot = (counts["at both limits"] + counts["under both"] + counts["one token"] + counts["slow TTFT"]) / window
    only_ttft = (counts["at both limits"] + counts["under both"] + counts["one token"] + counts["slow TPOT"]) / window
    got = [student.goodput(streams, ttft_limit, tpot_limit), student.goodput(streams, None, tpot_limit),
           student.goodput(streams, ttft_limit, None),
           student.summary(streams, ttft_limit=ttft_limit, tpot_limit=tpot_limit)["goodput"]]
    observe(rounded(got))
    shown = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    for (label, want), mine in zip([("both limits", both), ("the TPOT limit only", only_tpot),
                                    ("the TTFT limit only", only_ttft), ("summary's goodput", both)], got):
        assert close(mine, want), (f"with {label} (limits inclusive; {shown}; a {window:g} s window), goodput "
                                   f"should be {want:.4f}/s; got {mine}")


def record_from_fake_server(rng):
    """Stream replies of seeded shapes from corolab.bench's fake server and keep its records."""
    from corolab.bench import BenchConfig, run_bench
    from corolab.bench.fakeserver import FakeChatServer, chunk, usage

    requests, single_every, per_chunk = rng.randint(12, 20), rng.randint(3, 6), rng.randint(1, 3)
    served = 0

    async def varied(request, reply):
        nonlocal served
        served += 1
        n = served
        await asyncio.sleep(0.004 * (n % 4))                # a different prefill per request
        reply.start_stream()
        pieces = 1 if n % single_every == 0 else 2 + n % 3  # some replies are a single chunk
        for i in range(pieces):
            if i:
                await asyncio.sleep(0.002 * (1 + (n + i) % 3))
            reply.event(chunk(" ".join(f"t{i}.{j}" for j in range(per_chunk)) + " "))
            await reply.flush()
        await asyncio.sleep(0.003)                          # the last byte comes after the last token
        tokens = 1 if pieces == 1 else per_chunk * pieces   # a single chunk carries one token
        reply.event(chunk(usage=usage(prompt_tokens=4, completion_tokens=tokens)))
        reply.event("[DONE]")
        reply.end_stream()

    async def main():
        async with FakeChatServer(varied) as server:
            config = BenchConfig(url=server.url, concurrency=3, requests=requests, progress=False,
                                 ttft_limit=0.008, tpot_limit=0.0026)
            return (await run_bench(config)).runs[0]

    return requests, asyncio.run(main())


@points(3, hint="Use the same definitions as the package: corolab.bench.metrics.summarize. Tokens come "
                "from usage; E2EL ends at the last byte; percentiles interpolate; goodput per window second.")
def test_matches_corolab_bench_on_its_fake_server(student, rng, observe) -> None:
    requests, run = record_from_fake_server(rng)
    assert run.summary["completed"] == requests, f"the fake server should finish all {requests} requests"
    streams = [student.Stream(sent=r.start, chunks=list(r.chunk_times), end=r.end, tokens=r.output_tokens)
               for r in run.records]
    mine = student.summary(streams, ttft_limit=0.008, tpot_limit=0.0026)
    theirs = run.summary
    same = {metric: [close(mine[metric][key], theirs[metric][key]) for key in STATS]
            for metric in ("ttft", "tpot", "itl", "e2el")}
    same |= {key: close(mine[key], theirs[key]) for key in ("duration", "output_throughput", "goodput")}
    # The times differ from run to run; what the seed fixes is the shapes: observe those, and the agreement.
    observe([mine["completed"], round(mine["output_throughput"] * mine["duration"]),
             sum(student.tpot(s) is None for s in streams), sum(len(student.itl(s)) for s in streams), same])
    assert mine["completed"] == theirs["completed"], \
        f"completed: yours {mine['completed']}, the package's {theirs['completed']}"
    for key, agrees in same.items():
        if isinstance(agrees, list):
            differ = [stat for stat, ok in zip(STATS, agrees) if not ok]
            assert not differ, (f"{key} {differ} differ from corolab.bench: yours "
                                f"{[mine[key][s] for s in differ]}, the package's {[theirs[key][s] for s in differ]}")
        else:
            assert agrees, f"{key} differs from corolab.bench: yours {mine[key]}, the package's {theirs[key]}"


def open_loop_behind_a_freeze(student, rng):
    """An open-loop schedule (one request every ``gap``) sent over a single connection to a server that
    answers in ``service`` but freezes for a while. A request is sent at its due time, or when the
    connection frees up, whichever is later: so requests due during the freeze are sent late, and so are
    the first few, because the client started ``lag`` late."""
    gap, service, lag = ms(rng, 20, 50), ms(rng, 6, 12), ms(rng, 30, 200)
    freeze_from = ms(rng, 500, 1000)
    freeze_to = freeze_from + ms(rng, 500, 1000)
    streams, free_at = [], lag
    for i in range(int((freeze_to + 0.5) / gap) + 1):
        due = gap * i
        sent = max(due, free_at)
        begins = freeze_to if freeze_from <= sent < freeze_to else sent   # the frozen server starts late
        chunks = [begins + 0.6 * service, begins + 0.8 * service, begins + service]
        free_at = begins + service
        streams.append(student.Stream(sent=sent, chunks=chunks, end=free_at, tokens=3, due=due))
    return streams


@points(3, hint="With from_schedule=True, measure TTFT and E2EL from s.due, the time the schedule meant to "
                "send the request, and so goodput's TTFT check and the window's start (the first due); "
                "TPOT and ITL do not depend on the start, so they must not change.")
def test_coordinated_omission_needs_the_schedule(student, rng, observe) -> None:
    streams = open_loop_behind_a_freeze(student, rng)
    limit = 0.1
    naive = student.summary(streams, ttft_limit=limit)
    honest = student.summary(streams, ttft_limit=limit, from_schedule=True)
    direct = student.goodput(streams, limit, None, from_schedule=True)
    slow_naive = sum(student.e2el(s) > limit for s in streams)
    slow_honest = sum(student.e2el(s, from_schedule=True) > limit for s in streams)
    observe([slow_naive, slow_honest, reported(naive), reported(honest), rounded(direct)])
    for s in streams:
        assert close(student.e2el(s, from_schedule=True), s.end - s.due), \
            f"from the schedule, E2EL is end - due = {s.end - s.due:.6f}; got {student.e2el(s, from_schedule=True)}"
        first = student.ttft(s, from_schedule=True)
        assert close(first, s.chunks[0] - s.due), \
            f"from the schedule, TTFT is chunks[0] - due = {s.chunks[0] - s.due:.6f}; got {first}"
    assert slow_honest > slow_naive, (f"from the schedule, more requests should be slower than {limit} s than "
                                      f"from the send; got {slow_honest} and {slow_naive}")
    assert honest["e2el"]["p90"] > limit > naive["e2el"]["p90"], \
        f"p90 E2EL: from the send {naive['e2el']['p90']:.3f} s, from the schedule {honest['e2el']['p90']:.3f} s"
    assert honest["ttft"]["p90"] > limit, f"p90 TTFT from the schedule: {honest['ttft']['p90']:.3f} s"
    window = max(s.end for s in streams) - min(s.due for s in streams)
    assert close(honest["duration"], window), (f"from the schedule, the window starts at the first due time: "
                                               f"{window:.3f} s; got {honest['duration']}")
    good = sum(s.chunks[0] - s.due <= limit for s in streams)
    for label, got in [("summary's goodput", honest["goodput"]), ("goodput(..., from_schedule=True)", direct)]:
        assert close(got, good / window), (f"{label}: {good} requests had their first token within {limit} s "
                                           f"of their due time, over a {window:.3f} s window: "
                                           f"{good / window:.3f}/s; got {got}")
    for key in STATS:
        assert close(naive["tpot"][key], honest["tpot"][key]), f"TPOT {key} must not depend on from_schedule"
        assert close(naive["itl"][key], honest["itl"][key]), f"ITL {key} must not depend on from_schedule"
    closed = student.Stream(sent=0.0, chunks=[0.1], end=0.2, tokens=1)  # no schedule: measured from sent
    assert close(student.e2el(closed, from_schedule=True), 0.2), "a stream without due is measured from sent"
