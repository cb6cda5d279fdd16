"""The batched engine's scheduling decision, driven step by step with no threads and no model."""

from __future__ import annotations

import pytest

from corolab.serving.engine.base import QueueFullError
from corolab.serving.engine.scheduler import Entry, Scheduler


def entry(key: int, prompt_len: int = 10) -> Entry[str]:
    return Entry(key, prompt_len, f"request {key}")


def spans(plan) -> list[tuple[int, int, int]]:
    return [(c.entry.key, c.start, c.end) for c in plan.prefill]


def test_fifo_admission_up_to_the_batch_size():
    s: Scheduler[str] = Scheduler(max_batch_size=2, max_waiting=8, prefill_budget=1000)
    for key in (1, 2, 3):
        s.add(entry(key))
    plan = s.plan()
    assert spans(plan) == [(1, 0, 10), (2, 0, 10)]           # oldest first, two slots
    assert [e.key for e in plan.decode] == [1, 2]            # joined requests decode in the same step
    assert [e.key for e in s.waiting] == [3]
    assert spans(s.plan()) == []                              # no room: 3 waits
    s.finish(1)
    assert spans(s.plan()) == [(3, 0, 10)]                    # a slot freed: 3 joins at the next step


def test_the_prefill_budget_chunks_a_long_prompt_and_running_requests_keep_decoding():
    s: Scheduler[str] = Scheduler(max_batch_size=8, max_waiting=8, prefill_budget=100)
    s.add(entry(1, 20))
    s.plan()                                                  # 1 is running now
    s.add(entry(2, 250))                                      # a long prompt arrives
    s.add(entry(3, 30))
    steps = [s.plan() for _ in range(3)]
    assert [spans(p) for p in steps] == [[(2, 0, 100)], [(2, 100, 200)], [(2, 200, 250), (3, 0, 30)]]
    assert all(1 in [e.key for e in p.decode] for p in steps)  # never stalled by the long prompt
    assert [e.key for e in steps[2].decode] == [1, 2, 3]
    assert all(sum(c.end - c.start for c in p.prefill) <= 100 for p in steps)


def test_a_prompt_being_prefilled_holds_its_slot_and_goes_first():
    s: Scheduler[str] = Scheduler(max_batch_size=2, max_waiting=8, prefill_budget=10)
    s.add(entry(1, 25))
    s.add(entry(2, 5))
    assert spans(s.plan()) == [(1, 0, 10)]
    assert spans(s.plan()) == [(1, 10, 20)]                   # 2 does not overtake the unfinished prompt
    assert spans(s.plan()) == [(1, 20, 25), (2, 0, 5)]


def test_cancel_while_waiting_leaves_at_once_and_never_reaches_the_model():
    s: Scheduler[str] = Scheduler(max_batch_size=1, max_waiting=8, prefill_budget=100)
    s.add(entry(1))
    s.add(entry(2))
    s.plan()
    assert s.cancel(2) is not None and not s.waiting
    plan = s.plan()
    assert plan.drop == [] and spans(plan) == []


def test_cancel_in_the_model_frees_the_slot_and_drops_the_row_at_the_next_step():
    s: Scheduler[str] = Scheduler(max_batch_size=1, max_waiting=8, prefill_budget=100)
    s.add(entry(1))
    s.add(entry(2))
    s.plan()
    assert s.cancel(1) is None                                # it was in the model: dropped at the next plan
    plan = s.plan()
    assert [e.key for e in plan.drop] == [1]
    assert spans(plan) == [(2, 0, 10)]                        # its slot went to the next request at once


def test_a_full_queue_refuses_at_once():
    s: Scheduler[str] = Scheduler(max_batch_size=1, max_waiting=2, prefill_budget=100)
    s.add(entry(1))                                           # takes the free slot at the next step
    s.add(entry(2))
    s.add(entry(3))
    with pytest.raises(QueueFullError):
        s.add(entry(4))
    assert [e.key for e in s.waiting] == [1, 2, 3]
    s.plan()                                                  # 1 joins; 2 and 3 are really waiting now
    with pytest.raises(QueueFullError):
        s.add(entry(5))


def test_no_queue_still_serves_free_slots():
    """max_waiting=0: a request is refused only when it would have to wait for a slot."""
    s: Scheduler[str] = Scheduler(max_batch_size=2, max_waiting=0, prefill_budget=100)
    s.add(entry(1))
    s.add(entry(2))                                           # a burst: both before the worker plans
    with pytest.raises(QueueFullError):
        s.add(entry(3))
    assert [e.key for e in s.plan().decode] == [1, 2]


def test_no_request_starves():
    """Requests keep arriving; every one admitted finishes within a bounded number of steps."""
    s: Scheduler[str] = Scheduler(max_batch_size=4, max_waiting=100, prefill_budget=40)
    joined_at: dict[int, int] = {}
    for step in range(60):
        s.add(entry(step, 15))
        plan = s.plan()
        for c in plan.prefill:
            if c.last:
                joined_at[c.entry.key] = step
        for e in plan.decode:
            if step - joined_at[e.key] >= 3:                  # each request decodes 3 tokens, then leaves
                s.finish(e.key)
    waited = [joined_at[k] - k for k in joined_at]
    assert len(joined_at) >= 40 and max(waited) <= 20 and waited == sorted(waited)


def test_plan_listeners_see_every_plan_as_returned():
    s: Scheduler[str] = Scheduler(max_batch_size=8, max_waiting=8, prefill_budget=100)
    seen: list = []
    s.plan_listeners.append(seen.append)
    s.add(entry(1, 150))
    returned = [s.plan(), s.plan(), s.plan()]
    assert seen == returned and [spans(p) for p in seen] == [[(1, 0, 100)], [(1, 100, 150)], []]
    assert [len(p.decode) for p in seen] == [0, 1, 1]


def kv_scheduler(max_batch_size: int = 8) -> Scheduler[str]:
    """A scheduler whose KV budget holds 1,024 token columns: 1 GiB at 1 MiB a token."""
    s: Scheduler[str] = Scheduler(max_batch_size=max_batch_size, max_waiting=16, prefill_budget=10_000,
                                  kv_cache_gib=1.0)
    s.kv_bytes_per_token = 2**20
    return s


def test_requests_join_while_their_kv_cache_fits_the_budget():
    s = kv_scheduler()
    for key in range(1, 7):
        s.add(Entry(key, 100, f"request {key}", reply_len=156))  # 256 columns each: four fit in 1,024
    assert [c.entry.key for c in s.plan().prefill] == [1, 2, 3, 4]
    assert [e.key for e in s.waiting] == [5, 6]                    # rows were free; memory was not
    assert s.plan().prefill == []
    s.finish(2)
    assert [c.entry.key for c in s.plan().prefill] == [5]          # one leaves, one joins


def test_the_widest_row_sets_every_row_s_width():
    s = kv_scheduler()
    s.add(Entry(1, 400, "long", reply_len=112))                    # 512 columns: rows are padded to it
    for key in (2, 3, 4):
        s.add(Entry(key, 10, f"short {key}", reply_len=10))
    assert [c.entry.key for c in s.plan().prefill] == [1, 2]       # 2 x 512 = 1,024; a third row would pass it
    s.finish(1)
    assert [c.entry.key for c in s.plan().prefill] == [3, 4]       # without it, short rows are 20 columns


def test_a_request_that_does_not_fit_holds_the_queue_and_a_lone_one_always_joins():
    s = kv_scheduler()
    s.add(Entry(1, 10, "short", reply_len=500))                    # 510 columns
    s.add(Entry(2, 600, "too wide beside it", reply_len=400))      # 2 x 1,000 > 1,024
    s.add(Entry(3, 10, "would fit", reply_len=10))
    assert [c.entry.key for c in s.plan().prefill] == [1]
    assert [e.key for e in s.waiting] == [2, 3]                    # 3 does not overtake 2: 2 is never starved
    s.finish(1)
    assert [c.entry.key for c in s.plan().prefill] == [2]          # alone it fits
    s.finish(2)
    s.add(Entry(4, 3000, "bigger than the budget", reply_len=10))
    plan = s.plan()
    assert [c.entry.key for c in plan.prefill] == [3]
    s.finish(3)
    assert [c.entry.key for c in s.plan().prefill] == [4]          # the engine refuses it first; alone, it runs


def test_no_kv_size_means_rows_alone_limit_the_batch():
    s: Scheduler[str] = Scheduler(max_batch_size=3, max_waiting=8, prefill_budget=10_000, kv_cache_gib=0.001)
    for key in (1, 2, 3, 4):
        s.add(Entry(key, 1000, f"request {key}", reply_len=1000))
    assert [c.entry.key for c in s.plan().prefill] == [1, 2, 3]    # kv_bytes_per_token 0: the fake model's
