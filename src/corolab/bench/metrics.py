"""Run metrics from request records: pure functions, same meanings as vLLM's serving benchmark.

TTFT: sent → first content. E2EL: sent → last byte. TPOT: (E2EL − TTFT) / (output tokens − 1).
ITL: every gap between successive content chunks, pooled over requests. Throughput and goodput are per
second of the measured window (first request sent → last reply done).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from .records import RequestRecord

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so numbers match vLLM's."""
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


def window(records: Sequence[RequestRecord]) -> float:
    """First request sent → last reply finished (over every record that finished at all)."""
    ends = [r.end for r in records if r.end is not None]
    if not records or not ends:
        return 0.0
    return max(ends) - min(r.start for r in records)


def meets_slo(r: RequestRecord, ttft_limit: float | None, tpot_limit: float | None) -> bool:
    """A one-token reply has no TPOT; it is judged on TTFT alone (vLLM counts its TPOT as 0)."""
    if not r.ok:
        return False
    if ttft_limit is not None and (r.ttft is None or r.ttft > ttft_limit):
        return False
    return not (tpot_limit is not None and r.tpot is not None and r.tpot > tpot_limit)


def summarize(records: Sequence[RequestRecord], *, duration: float | None = None,
              ttft_limit: float | None = None, tpot_limit: float | None = None) -> dict:
    """Everything a run reports. ``duration`` overrides the window computed from the records."""
    ok = [r for r in records if r.ok]
    span = window(records) if duration is None else duration
    per_s = (lambda n: n / span) if span > 0 else (lambda n: math.nan)
    out_tokens = sum(r.output_tokens for r in ok)
    good = sum(meets_slo(r, ttft_limit, tpot_limit) for r in ok)
    return {
        "requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "errors": dict(Counter(r.error for r in records if r.error)),
        "duration": span,
        "output_tokens": out_tokens,
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "usage_from_server": sum(r.usage_from_server for r in ok),
        "request_throughput": per_s(len(ok)),
        "output_throughput": per_s(out_tokens),
        "goodput": per_s(good) if (ttft_limit is not None or tpot_limit is not None) else None,
        "good_requests": good,
        "ttft": stats([r.ttft for r in ok if r.ttft is not None]),
        "tpot": stats([r.tpot for r in ok if r.tpot is not None]),
        "itl": stats([gap for r in ok for gap in r.itl]),
        "e2el": stats([r.e2el for r in ok if r.e2el is not None]),
    }
