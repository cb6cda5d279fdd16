"""Shared helpers for the load tester's tests: a scripted clock and scripted servers."""

from __future__ import annotations

from collections.abc import Iterable


class StepClock:
    """Returns the scripted readings in order. The tester reads its clock once when it sends a request and
    once per event it receives, so a test that knows the events knows every timestamp."""

    def __init__(self, readings: Iterable[float]):
        self.readings = list(readings)
        self.reads = 0

    def __call__(self) -> float:
        if self.reads >= len(self.readings):
            raise AssertionError(f"clock read {self.reads + 1} times; script has {len(self.readings)}")
        self.reads += 1
        return self.readings[self.reads - 1]


class FakeTime:
    """A clock that only moves when the code under test sleeps: Poisson arrivals without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
