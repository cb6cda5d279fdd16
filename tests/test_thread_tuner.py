"""The thread tuner's decisions, on step times the test writes (no clock, no torch): it must keep every core
on a quiet machine, step down within a few steps when a competitor makes every-core steps slow, come back
when the machine is quiet again, and probe ever more rarely while the machine stays busy."""

from __future__ import annotations

import pytest

from corolab.backends.threads import ThreadTuner


class Machine:
    """Step times as a function of the thread count: ``cost[threads]`` seconds per step at ``rows`` rows."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost = dict(cost)
        self.applied: list[int] = []
        self.steps: list[int] = []  # the thread count each step ran with

    def run(self, tuner: ThreadTuner, steps: int, rows: int = 8) -> None:
        for _ in range(steps):
            tuner.before_step()
            threads = self.applied[-1]
            self.steps.append(threads)
            tuner.after_step(rows, self.cost[threads])


def tuner_for(machine: Machine, **kwargs) -> ThreadTuner:
    return ThreadTuner(1, 2, machine.applied.append, **kwargs)


def test_a_quiet_machine_keeps_every_core():
    quiet = Machine({1: 0.060, 2: 0.045})
    tuner = tuner_for(quiet, probe_every=16)
    quiet.run(tuner, 400)
    assert tuner.current == 2
    assert quiet.steps.count(1) < 0.1 * len(quiet.steps)  # the probes with one thread, and no more
    assert tuner.wait > 16  # every probe lost, so they come ever more rarely


def test_a_competitor_makes_it_step_down_at_once_and_quiet_brings_it_back():
    machine = Machine({1: 0.060, 2: 0.045})
    tuner = tuner_for(machine, probe_every=16)
    machine.run(tuner, 40)
    assert tuner.current == 2
    machine.cost[2] = 1.5  # another process now spins on one core: two threads wait for each other
    before = len(machine.steps)
    machine.run(tuner, 10)
    assert tuner.current == 1
    slow = [t for t in machine.steps[before:] if t == 2]
    assert len(slow) <= 2, "it should step down after one slow step and a probe"
    machine.run(tuner, 300)
    assert tuner.current == 1
    probes_while_busy = machine.steps[before + 10:].count(2)
    assert probes_while_busy <= 300 // 16 // 2, "probes while busy should back off"
    machine.cost[2] = 0.045  # the competitor left
    machine.run(tuner, tuner.max_probe_every + 10)
    assert tuner.current == 2


def test_more_threads_must_win_by_the_margin():
    """Noise-sized gains do not move it to more threads: 5 % faster is not 10 % faster."""
    machine = Machine({1: 0.050, 2: 0.0475})
    tuner = tuner_for(machine, probe_every=8)
    tuner.current = 1
    machine.run(tuner, 100)
    assert tuner.current == 1


def test_a_probe_across_a_batch_change_decides_nothing():
    machine = Machine({1: 0.060, 2: 0.030})
    tuner = tuner_for(machine, probe_every=4, probe_steps=2)
    machine.run(tuner, 4, rows=8)
    assert tuner.probing
    tuner.before_step()
    tuner.after_step(8, 0.010)  # a probe step at 8 rows, impossibly fast...
    tuner.before_step()
    tuner.after_step(9, 0.010)  # ...and one at 9 rows: not comparable
    assert not tuner.probing and tuner.current == 2 and tuner.switches == 0


def test_the_thread_count_is_applied_only_when_it_changes():
    machine = Machine({1: 0.060, 2: 0.045})
    tuner = tuner_for(machine, probe_every=1000)
    machine.run(tuner, 50)
    assert machine.applied == [2]


def test_bad_choices_are_refused():
    with pytest.raises(ValueError):
        ThreadTuner(2, 2, print)
    with pytest.raises(ValueError):
        ThreadTuner(0, 2, print)
