"""Metric arithmetic on hand-built records: the pure functions behind every number the tester prints."""

import math

import numpy as np
import pytest

from corolab.bench.metrics import meets_slo, percentile, summarize
from corolab.bench.records import RequestRecord


def rec(index, start, chunk_times, end, tokens=None, error=None):
    r = RequestRecord(index=index, start=start)
    for t in chunk_times:
        r.add_content(t, "x")
    if tokens is not None:
        r.set_usage({"completion_tokens": tokens, "prompt_tokens": 5})
    if error:
        r.fail(error)
    else:
        r.finish(end)
    return r


def test_percentile_matches_numpy_linear_interpolation():
    rng = np.random.default_rng(1)
    values = list(rng.exponential(size=101))
    for p in (0, 50, 90, 99, 100):
        assert percentile(values, p) == pytest.approx(np.percentile(values, p))
    assert math.isnan(percentile([], 50))


def test_record_durations_follow_vllm_definitions():
    r = rec(0, 10.0, [10.5, 10.7, 11.0], 11.2, tokens=3)
    assert r.ttft == pytest.approx(0.5)
    assert r.itl == pytest.approx([0.2, 0.3])
    assert r.e2el == pytest.approx(1.2)
    assert r.tpot == pytest.approx((1.2 - 0.5) / (3 - 1))


def test_output_tokens_come_from_usage_else_from_chunks():
    with_usage = rec(0, 0.0, [1.0, 2.0], 2.0, tokens=7)
    without = rec(1, 0.0, [1.0, 2.0], 2.0)
    assert (with_usage.output_tokens, with_usage.usage_from_server) == (7, True)
    assert (without.output_tokens, without.usage_from_server) == (2, False)
    assert with_usage.tpot == pytest.approx(1.0 / 6)


def test_single_token_reply_has_no_tpot_and_is_judged_on_ttft():
    r = rec(0, 0.0, [0.3], 0.3, tokens=1)
    assert r.tpot is None
    assert meets_slo(r, ttft_limit=0.5, tpot_limit=0.001)
    assert not meets_slo(r, ttft_limit=0.2, tpot_limit=None)


def test_summarize_throughput_goodput_and_errors():
    records = [
        rec(0, 0.0, [0.1, 0.2, 0.3], 0.3, tokens=3),  # ttft .1, tpot .1
        rec(1, 1.0, [1.5, 1.6], 2.0, tokens=2),  # ttft .5, tpot .5
        rec(2, 0.5, [], None, error="http_500"),
        rec(3, 0.5, [], None, error="timeout"),
        rec(4, 0.5, [], None, error="timeout"),
    ]
    s = summarize(records, ttft_limit=0.2, tpot_limit=0.2)
    assert s["duration"] == pytest.approx(2.0)  # first start 0.0 -> last end 2.0
    assert (s["completed"], s["failed"]) == (2, 3)
    assert s["errors"] == {"http_500": 1, "timeout": 2}
    assert s["request_throughput"] == pytest.approx(2 / 2.0)
    assert s["output_throughput"] == pytest.approx(5 / 2.0)
    assert s["good_requests"] == 1 and s["goodput"] == pytest.approx(0.5)
    assert s["ttft"]["mean"] == pytest.approx(0.3)
    assert s["ttft"]["median"] == pytest.approx(0.3)
    assert s["itl"] == pytest.approx({"mean": 0.1, "median": 0.1, "p90": 0.1, "p99": 0.1})
    assert s["e2el"]["p99"] == pytest.approx(percentile([0.3, 1.0], 99))
    assert summarize(records)["goodput"] is None  # no limits given: no goodput claimed


def test_summarize_nothing_completed_is_nan_not_a_crash():
    s = summarize([rec(0, 0.0, [], None, error="connect")])
    assert s["completed"] == 0 and math.isnan(s["request_throughput"]) and math.isnan(s["ttft"]["mean"])
