"""corolab.bench.settle: timing claims warn instead of failing, and are measured again until they hold."""

import asyncio

import pytest

from corolab.bench.settle import WARNING, expect, settle


def test_expect_is_silent_when_every_claim_holds(capsys):
    assert expect({"a < b": True, "c > d": True}) is True
    assert capsys.readouterr().out == ""


def test_expect_warns_naming_each_failed_claim(capsys):
    assert expect({"tok[4] > 2.5 * tok[1]": False, "fine": True}, context="in the sweep") is False
    out = capsys.readouterr().out
    assert out.startswith(WARNING) and "1 of 2 timing claims in the sweep" in out
    assert "tok[4] > 2.5 * tok[1]" in out and "fine" not in out


def test_settle_measures_again_until_the_claims_hold(capsys):
    values = iter([0.9, 1.1, 5.0])
    calls = []

    async def measure():
        calls.append(1)
        return next(values)

    result, held = asyncio.run(settle(measure, lambda v: {"ratio > 1": v > 1}, rounds=3))
    assert (result, held, len(calls)) == (1.1, True, 2)
    out = capsys.readouterr().out
    assert "round 1: ratio > 1 did not hold" in out and WARNING not in out


def test_settle_warns_after_the_last_round_and_returns_its_result(capsys):
    values = iter([1, 2, 3])
    result, held = asyncio.run(settle(lambda: next(values), lambda v: {"v > 10": v > 10}, rounds=3))
    assert (result, held) == (3, False)
    out = capsys.readouterr().out
    assert out.count("did not hold: measuring again") == 2 and WARNING in out


def test_settle_needs_a_round():
    with pytest.raises(ValueError):
        asyncio.run(settle(lambda: 1, lambda v: {}, rounds=0))
