"""Lab 9 instructor solution: TTFT, E2EL, TPOT, ITL, percentiles and goodput from recorded streams."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Stream:
    """One streamed request as the client recorded it: raw clock readings, in seconds."""

    sent: float                                        # when the client sent the request
    chunks: list[float] = field(default_factory=list)  # when each content-carrying chunk arrived
    end: float | None = None                           # when the last byte arrived; None: the request failed
    tokens: int = 0                                    # output tokens, as the server's usage counted them
    due: float | None = None                           # open loop: when the schedule meant to send it

    @property
    def ok(self) -> bool:
        return self.end is not None


def _start(s: Stream, from_schedule: bool) -> float:
    return s.due if from_schedule and s.due is not None else s.sent


def ttft(s: Stream, *, from_schedule: bool = False) -> float | None:
    if not s.chunks:
        return None
    return s.chunks[0] - _start(s, from_schedule)


def e2el(s: Stream, *, from_schedule: bool = False) -> float | None:
    if s.end is None:
        return None
    return s.end - _start(s, from_schedule)


def tpot(s: Stream) -> float | None:
    first, last = ttft(s), e2el(s)
    if first is None or last is None or s.tokens < 2:
        return None
    return (last - first) / (s.tokens - 1)


def itl(s: Stream) -> list[float]:
    return [b - a for a, b in zip(s.chunks, s.chunks[1:])]


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": sum(values) / len(values) if values else math.nan,
        "median": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
    }


def window(streams: Sequence[Stream], *, from_schedule: bool = False) -> float:
    ends = [s.end for s in streams if s.end is not None]
    if not ends:
        return 0.0
    return max(ends) - min(_start(s, from_schedule) for s in streams)


def meets_slo(s: Stream, ttft_limit: float | None, tpot_limit: float | None, *,
              from_schedule: bool = False) -> bool:
    if not s.ok:
        return False
    if ttft_limit is not None:
        first = ttft(s, from_schedule=from_schedule)
        if first is None or first > ttft_limit:
            return False
    if tpot_limit is not None:
        per_token = tpot(s)
        if per_token is not None and per_token > tpot_limit:
            return False
    return True


def goodput(streams: Sequence[Stream], ttft_limit: float | None, tpot_limit: float | None, *,
            from_schedule: bool = False) -> float:
    span = window(streams, from_schedule=from_schedule)
    good = sum(meets_slo(s, ttft_limit, tpot_limit, from_schedule=from_schedule) for s in streams)
    return good / span if span > 0 else math.nan


def summary(streams: Sequence[Stream], *, ttft_limit: float | None = None, tpot_limit: float | None = None,
            from_schedule: bool = False) -> dict:
    ok = [s for s in streams if s.ok]
    span = window(streams, from_schedule=from_schedule)
    tokens = sum(s.tokens for s in ok)
    firsts = [ttft(s, from_schedule=from_schedule) for s in ok]
    per_token = [tpot(s) for s in ok]
    return {
        "completed": len(ok),
        "failed": len(streams) - len(ok),
        "duration": span,
        "output_throughput": tokens / span if span > 0 else math.nan,
        "goodput": goodput(streams, ttft_limit, tpot_limit, from_schedule=from_schedule)
        if ttft_limit is not None or tpot_limit is not None else None,
        "ttft": stats([t for t in firsts if t is not None]),
        "tpot": stats([t for t in per_token if t is not None]),
        "itl": stats([gap for s in ok for gap in itl(s)]),
        "e2el": stats([e2el(s, from_schedule=from_schedule) for s in ok]),
    }
