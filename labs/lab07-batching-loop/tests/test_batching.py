"""Graded tests for Lab 7. The fake model's step costs one tick however many rows it serves, so every
assertion counts steps and tokens: exact on any machine, and no wall clock anywhere."""

from __future__ import annotations

import asyncio

from corolab.labs.grading import points

LIMIT = 5.0  # seconds the asynchronous test may take before it counts as hanging (it needs milliseconds)


def drain(scheduler, max_steps: int = 1000) -> int:
    """Step until nothing is left to do; return how many steps ran. A loop that never ends fails here."""
    for taken in range(max_steps):
        if not scheduler.step():
            if scheduler.waiting or scheduler.running:
                raise AssertionError("step() ran no rows while requests were still waiting or running")
            return taken
    raise AssertionError(f"still busy after {max_steps} steps")


def expected(student, request_id: str, n: int) -> list[int]:
    return [student.token_for(request_id, i) for i in range(n)]


@points(2, hint="Admit the waiting request, call model.step([...]) once per step, deliver() each token, and "
                "finish('length') once the request has max_tokens tokens.")
def test_one_request_gets_its_reply(student) -> None:
    model = student.FakeModel()
    scheduler = student.Scheduler(model)
    request = scheduler.submit(student.Request("a", max_tokens=5))
    assert drain(scheduler) == 5
    assert request.tokens == expected(student, "a", 5)
    assert request.finish_reason == "length"
    assert model.steps == 5


@points(1, hint="When the model returns EOS for a row, finish('stop') that request and do not deliver the EOS.")
def test_eos_ends_a_reply_with_stop(student) -> None:
    model = student.FakeModel(eos_at={"b": 3})
    scheduler = student.Scheduler(model)
    request = scheduler.submit(student.Request("b", max_tokens=10))
    drain(scheduler)
    assert request.tokens == expected(student, "b", 3)
    assert request.finish_reason == "stop"


@points(3, hint="Every running request belongs in the same model step: pass all of self.running to "
                "model.step at once, not one request per step.")
def test_requests_share_every_step(student) -> None:
    model = student.FakeModel()
    scheduler = student.Scheduler(model, max_batch_size=4)
    requests = [scheduler.submit(student.Request(name, max_tokens=6)) for name in "abcd"]
    assert drain(scheduler) == 6                     # four replies of 6 tokens in 6 steps, not 24
    assert all(len(batch) == 4 for batch in model.batches)
    assert all(r.tokens == expected(student, r.id, 6) and r.finish_reason == "length" for r in requests)


@points(2, hint="model.step(batch) returns one token per row in the order of batch: zip them, and give each "
                "request only its own token.")
def test_each_row_gets_its_own_token(student) -> None:
    model = student.FakeModel(eos_at={"q": 2})
    scheduler = student.Scheduler(model, max_batch_size=3)
    lengths = {"p": 4, "q": 9, "r": 7}
    requests = {name: scheduler.submit(student.Request(name, max_tokens=n)) for name, n in lengths.items()}
    drain(scheduler)
    assert requests["p"].tokens == expected(student, "p", 4)
    assert requests["q"].tokens == expected(student, "q", 2) and requests["q"].finish_reason == "stop"
    assert requests["r"].tokens == expected(student, "r", 7)


@points(2, hint="Never run more than max_batch_size rows, and admit waiting requests oldest first "
                "(self.waiting.popleft()).")
def test_batch_limit_and_first_come_first_served(student) -> None:
    model = student.FakeModel()
    scheduler = student.Scheduler(model, max_batch_size=2)
    names = ["r0", "r1", "r2", "r3", "r4", "r5"]
    for name in names:
        scheduler.submit(student.Request(name, max_tokens=3))
    drain(scheduler)
    assert max(len(batch) for batch in model.batches) == 2
    first_step = {}
    for i, batch in enumerate(model.batches):
        for name in batch:
            first_step.setdefault(name, i)
    assert sorted(names, key=lambda n: first_step[n]) == names
    assert model.steps == 9                          # 6 replies of 3 tokens, two at a time


@points(3, hint="A request that has waited longest must get the next free slot, however many newer (or "
                "shorter) requests keep arriving: admit in arrival order.")
def test_no_request_starves(student) -> None:
    model = student.FakeModel()
    scheduler = student.Scheduler(model, max_batch_size=1)
    scheduler.submit(student.Request("first", max_tokens=3))
    patient = scheduler.submit(student.Request("patient", max_tokens=5))
    for i in range(30):                              # a short request arrives at every step
        scheduler.submit(student.Request(f"short{i}", max_tokens=1))
        scheduler.step()
    assert patient.finish_reason == "length", "the long request that came second never finished"
    first_step = next(i for i, batch in enumerate(model.batches) if "patient" in batch)
    assert first_step == 3                           # right after "first" finished


@points(3, hint="Retire cancelled requests at the START of step(), before admitting: the freed slot goes to "
                "a waiting request in that same step, and a cancelled request gets no more tokens.")
def test_cancel_frees_the_slot_at_once(student) -> None:
    model = student.FakeModel()
    scheduler = student.Scheduler(model, max_batch_size=1)
    talker = scheduler.submit(student.Request("talker", max_tokens=100))
    waiter = scheduler.submit(student.Request("waiter", max_tokens=2))
    gone = scheduler.submit(student.Request("gone", max_tokens=2))
    scheduler.step()
    assert model.batches == [["talker"]]
    scheduler.cancel(talker)
    scheduler.cancel(gone)                           # cancelled while still waiting: it must never run
    assert [r.id for r in scheduler.step()] == ["waiter"]
    assert talker.finish_reason == "cancelled" and len(talker.tokens) == 1
    drain(scheduler)
    assert gone.finish_reason == "cancelled" and gone.tokens == []
    assert all("gone" not in batch for batch in model.batches)
    assert waiter.tokens == expected(student, "waiter", 2)


@points(3, hint="Throughput (tokens per model step) should grow with the number of concurrent requests, up "
                "to max_batch_size: admit as many waiting requests as there are free slots.")
def test_throughput_grows_with_concurrency(student) -> None:
    rates = {}
    for concurrency in (1, 2, 4, 8):
        model = student.FakeModel()
        scheduler = student.Scheduler(model, max_batch_size=8)
        requests = [scheduler.submit(student.Request(f"c{i}", max_tokens=8)) for i in range(concurrency)]
        drain(scheduler)
        rates[concurrency] = sum(len(r.tokens) for r in requests) / model.steps
    assert rates[1] < rates[2] < rates[4] < rates[8], rates
    assert rates[8] >= 4 * rates[1], rates


@points(2, hint="Each step hands out one token to every running request, so the streams of concurrent "
                "requests interleave; run() and stream() are given, step() does the work.")
def test_streams_overlap_in_the_event_loop(student) -> None:
    async def main() -> list[str]:
        model = student.FakeModel()
        scheduler = student.Scheduler(model, max_batch_size=4)
        loop_task = asyncio.create_task(scheduler.run())
        received: list[str] = []

        async def consume(name: str) -> list[int]:
            request = scheduler.submit(student.Request(name, max_tokens=4))
            tokens = []
            async for token in scheduler.stream(request):
                received.append(name)
                tokens.append(token)
            return tokens

        try:
            replies = await asyncio.wait_for(asyncio.gather(*(consume(n) for n in "xyz")), LIMIT)
        finally:
            loop_task.cancel()
        assert replies == [expected(student, n, 4) for n in "xyz"]
        return received

    received = asyncio.run(main())
    switches = sum(a != b for a, b in zip(received, received[1:]))
    assert switches >= 6, f"the three streams did not interleave: {''.join(received)}"
