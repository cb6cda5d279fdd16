"""The thread tuner's decisions on a machine the test plays (its clock, the process's CPU time, the cores'
idle time; no torch): it keeps every core while its threads get them, steps down within one window when a
competitor starves one of them, stays down while no core is free, and comes back when one is."""

from __future__ import annotations

import pytest

from corolab.serving.backends.cpu.torch_threads import ThreadTuner, machine_idle_seconds


class Machine:
    """Two cores. ``competitor``: another process spins on one of them. A step takes ``step`` seconds (a
    power of two, so the windows' sums are exact)."""

    def __init__(self) -> None:
        self.now = self.cpu = self.idle = 0.0
        self.competitor = False
        self.applied: list[int] = []
        self.threads = 0

    def tuner(self, **kwargs) -> ThreadTuner:
        return ThreadTuner(1, 2, self._apply, cpu_seconds=lambda: self.cpu, idle_seconds=lambda: self.idle,
                           clock=lambda: self.now, **kwargs)

    def _apply(self, n: int) -> None:
        self.applied.append(n)
        self.threads = n

    def run(self, tuner: ThreadTuner, steps: int, step: float = 1 / 16) -> list[int]:
        """The thread count each step ran with."""
        used = []
        for _ in range(steps):
            tuner.before_step()
            used.append(self.threads)
            self.now += step
            if self.threads == 2:  # spinning threads: all CPU, but a competitor takes a third of it
                self.cpu += step * 2 * (0.66 if self.competitor else 1.0)
            else:
                self.cpu += step
                self.idle += 0.0 if self.competitor else step * 0.98
            tuner.after_step()
        return used


def test_a_quiet_machine_keeps_every_core():
    machine = Machine()
    tuner = machine.tuner()
    assert set(machine.run(tuner, 200)) == {2}
    assert machine.applied == [2]  # applied once, not every step


def test_a_competitor_makes_it_step_down_within_a_window_and_a_free_core_brings_it_back():
    machine = Machine()
    tuner = machine.tuner(window=0.25)
    machine.run(tuner, 20)
    machine.competitor = True
    used = machine.run(tuner, 100)
    assert used.count(2) == 4, "one window: 0.25 s is 4 steps of 1/16 s"
    assert used[-1] == 1
    machine.competitor = False
    used = machine.run(tuner, 20)
    assert used[-1] == 2
    assert used.count(1) == 8, "two windows with a core idle, then back"


def test_one_idle_window_is_not_enough_to_come_back():
    """A competitor that pauses for a moment (one window) does not bring two threads back."""
    machine = Machine()
    tuner = machine.tuner(window=0.25)
    tuner.current = 1
    machine.competitor = True
    machine.run(tuner, 20)
    machine.competitor = False
    machine.run(tuner, 4)
    machine.competitor = True
    assert set(machine.run(tuner, 40)) == {1}
    assert tuner.switches == 0


def test_bad_choices_are_refused():
    with pytest.raises(ValueError):
        ThreadTuner(2, 2, print)
    with pytest.raises(ValueError):
        ThreadTuner(0, 2, print)


def test_this_machine_reports_its_idle_time():
    """Linux's /proc/stat is read for our cores (the tuner is off where it cannot be)."""
    first = machine_idle_seconds()
    if first is None:
        pytest.skip("no /proc/stat here")
    assert first >= 0 and machine_idle_seconds() >= first
