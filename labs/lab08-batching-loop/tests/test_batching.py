"""Graded tests for Lab 8. The fake model's step costs one tick however many rows it serves, so every
assertion counts steps and tokens: exact on any machine, and no wall clock anywhere.

Each test draws its request ids and lengths from ``rng`` (a new seed for every grading run) and
``observe``s what your scheduler produced from them: the tokens each request received, how it finished,
which requests shared each model step. The grader compares those with the reference solution's.
"""

from __future__ import annotations

import asyncio
import string

from corolab.labs.grading import points

LIMIT = 5.0  # seconds the asynchronous test waits for any one token (it needs milliseconds)


def drain(scheduler, max_steps: int = 1000) -> int:
    """Step until nothing is left to do; return how many steps ran. A loop that never ends fails here."""
    for taken in range(max_steps):
        if not scheduler.step():
            if scheduler.waiting or scheduler.running:
                raise AssertionError("step() ran no rows while requests were still waiting or running")
            return taken
    raise AssertionError(f"still busy after {max_steps} steps: do finished requests leave self.running?")


def expected(student, request_id: str, n: int) -> list[int]:
    """The first ``n`` tokens the fake model gives ``request_id``."""
    return [student.token_for(request_id, i) for i in range(n)]


def new_ids(rng, n: int) -> list[str]:
    """``n`` distinct random request ids, such as "kqzv"."""
    ids: list[str] = []
    while len(ids) < n:
        name = "".join(rng.choices(string.ascii_lowercase, k=4))
        if name not in ids:
            ids.append(name)
    return ids


def check_reply(student, request, n: int, reason: str) -> None:
    want = expected(student, request.id, n)
    assert request.tokens == want, (f"request {request.id!r} should have received its first {n} tokens "
                                    f"{want}, got {len(request.tokens)}: {request.tokens}")
    assert request.finish_reason == reason, (f"request {request.id!r} should end with {reason!r}, "
                                             f"got {request.finish_reason!r}")


@points(2, hint="Admit the waiting request, call model.step([...]) once per step, deliver() each token, and "
                "finish('length') once the request has max_tokens tokens.")
def test_one_request_gets_its_reply(student, rng, observe) -> None:
    (name,) = new_ids(rng, 1)
    n = rng.randint(3, 9)
    model = student.FakeModel()
    scheduler = student.Scheduler(model)
    request = scheduler.submit(student.Request(name, max_tokens=n))
    steps = drain(scheduler)
    observe([steps, model.steps, request.tokens, request.finish_reason])
    assert steps == model.steps == n, f"a {n}-token reply should take {n} model steps, took {model.steps}"
    check_reply(student, request, n, "length")


@points(1, hint="When the model returns EOS for a row, finish('stop') that request and do not deliver the EOS.")
def test_eos_ends_a_reply_with_stop(student, rng, observe) -> None:
    (name,) = new_ids(rng, 1)
    eos_at = rng.randint(1, 6)
    model = student.FakeModel(eos_at={name: eos_at})
    scheduler = student.Scheduler(model)
    request = scheduler.submit(student.Request(name, max_tokens=eos_at + rng.randint(2, 6)))
    drain(scheduler)
    observe([request.tokens, request.finish_reason, model.steps])
    check_reply(student, request, eos_at, "stop")
    assert model.steps == eos_at + 1, f"EOS came at step {eos_at + 1}; the model ran {model.steps} steps"


@points(3, hint="Every running request belongs in the same model step: pass all of self.running to "
                "model.step at once, not one request per step.")
def test_requests_share_every_step(student, rng, observe) -> None:
    n, length = rng.randint(3, 6), rng.randint(4, 8)
    model = student.FakeModel()
    scheduler = student.Scheduler(model, max_batch_size=n)
    requests = [scheduler.submit(student.Request(name, max_tokens=length)) for name in new_ids(rng, n)]
    steps = drain(scheduler)
    observe([steps, [len(batch) for batch in model.batches], [r.tokens for r in requests]])
    assert steps == length, (f"{n} replies of {length} tokens, with room for all {n} in a batch, should take "
                             f"{length} steps, not {steps}")
    sizes = [len(batch) for batch in model.batches]
    assert all(size == n for size in sizes), f"every step should serve all {n} requests; batch sizes: {sizes}"
    for request in requests:
        check_reply(student, request, length, "length")


@points(2, hint="model.step(batch) returns one token per row in the order of batch: zip them, and give each "
                "request only its own token.")
def test_each_row_gets_its_own_token(student, rng, observe) -> None:
    names = new_ids(rng, 3)
    lengths = {name: rng.randint(3, 9) for name in names}
    stopper = rng.choice(names)
    eos_at = rng.randint(1, lengths[stopper] - 1)
    model = student.FakeModel(eos_at={stopper: eos_at})
    scheduler = student.Scheduler(model, max_batch_size=3)
    requests = {name: scheduler.submit(student.Request(name, max_tokens=n)) for name, n in lengths.items()}
    drain(scheduler)
    observe({name: [r.tokens, r.finish_reason] for name, r in requests.items()})
    for name, request in requests.items():
        if name == stopper:
            check_reply(student, request, eos_at, "stop")
        else:
            check_reply(student, request, lengths[name], "length")


@points(2, hint="Never run more than max_batch_size rows, and admit waiting requests oldest first "
                "(self.waiting.popleft()).")
def test_batch_limit_and_first_come_first_served(student, rng, observe) -> None:
    limit, length = rng.randint(2, 3), rng.randint(2, 4)
    names = new_ids(rng, rng.randint(5, 8))
    model = student.FakeModel()
    scheduler = student.Scheduler(model, max_batch_size=limit)
    for name in names:
        scheduler.submit(student.Request(name, max_tokens=length))
    drain(scheduler)
    observe(model.batches)
    widest = max(len(batch) for batch in model.batches)
    assert widest == limit, f"max_batch_size={limit}, but the widest step had {widest} rows"
    first_step: dict[str, int] = {}
    for i, batch in enumerate(model.batches):
        for name in batch:
            first_step.setdefault(name, i)
    admitted = sorted(names, key=lambda n: first_step.get(n, len(model.batches)))
    assert admitted == names, f"requests should start in arrival order {names}, started in order {admitted}"
    rounds = -(-len(names) // limit)
    assert model.steps == rounds * length, (f"{len(names)} replies of {length} tokens, {limit} at a time, "
                                            f"should take {rounds * length} steps, took {model.steps}")


@points(3, hint="A request that has waited longest must get the next free slot, however many newer (or "
                "shorter) requests keep arriving: admit in arrival order.")
def test_no_request_starves(student, rng, observe) -> None:
    first_name, patient_name = new_ids(rng, 2)
    first_len, patient_len = rng.randint(1, 5), rng.randint(2, 6)
    model = student.FakeModel()
    scheduler = student.Scheduler(model, max_batch_size=1)
    scheduler.submit(student.Request(first_name, max_tokens=first_len))
    patient = scheduler.submit(student.Request(patient_name, max_tokens=patient_len))
    for i in range(20):                              # a short request arrives at every step
        scheduler.submit(student.Request(f"short{i}", max_tokens=1))
        scheduler.step()
    started = next((i for i, batch in enumerate(model.batches) if patient_name in batch), None)
    observe([started, patient.tokens, patient.finish_reason])
    when = "never started" if started is None else f"started at step {started}"
    assert started == first_len, (f"the request that came second should start right after the first one "
                                  f"finished, at step {first_len}; it {when}")
    check_reply(student, patient, patient_len, "length")


@points(3, hint="Retire cancelled requests at the START of step(), before admitting: the freed slot goes to "
                "a waiting request in that same step, and a cancelled request gets no more tokens.")
def test_cancel_frees_the_slot_at_once(student, rng, observe) -> None:
    talker_name, waiter_name, gone_name = new_ids(rng, 3)
    talked, waiter_len = rng.randint(1, 4), rng.randint(1, 4)
    model = student.FakeModel()
    scheduler = student.Scheduler(model, max_batch_size=1)
    talker = scheduler.submit(student.Request(talker_name, max_tokens=100))
    waiter = scheduler.submit(student.Request(waiter_name, max_tokens=waiter_len))
    gone = scheduler.submit(student.Request(gone_name, max_tokens=2))
    for _ in range(talked):
        scheduler.step()
    scheduler.cancel(talker)
    scheduler.cancel(gone)                           # cancelled while still waiting: it must never run
    next_step = [r.id for r in scheduler.step()]
    drain(scheduler)
    observe([next_step, [talker.finish_reason, len(talker.tokens)], [gone.finish_reason, gone.tokens],
             waiter.tokens, model.batches])
    assert next_step == [waiter_name], (f"the step right after the cancellation should run only the waiting "
                                        f"request {waiter_name!r}; it ran {next_step}")
    assert talker.finish_reason == "cancelled" and len(talker.tokens) == talked, (
        f"the cancelled request should end 'cancelled' with the {talked} token(s) it had; it ended "
        f"{talker.finish_reason!r} with {len(talker.tokens)}")
    assert gone.finish_reason == "cancelled" and gone.tokens == [], (
        f"a request cancelled while waiting should end 'cancelled' with no tokens; it ended "
        f"{gone.finish_reason!r} with {len(gone.tokens)}")
    ran_gone = [i for i, batch in enumerate(model.batches) if gone_name in batch]
    assert not ran_gone, f"the request cancelled while waiting ran in steps {ran_gone}"
    check_reply(student, waiter, waiter_len, "length")


@points(3, hint="Throughput (tokens per model step) should grow with the number of concurrent requests, up "
                "to max_batch_size: admit as many waiting requests as there are free slots.")
def test_throughput_grows_with_concurrency(student, rng, observe) -> None:
    shortest = rng.randint(5, 8)
    lengths = [rng.randint(shortest, 2 * shortest - 1) for _ in range(8)]  # longest < twice the shortest
    names = new_ids(rng, 8)
    measured = {}
    for concurrency in (1, 2, 4, 8):
        model = student.FakeModel()
        scheduler = student.Scheduler(model, max_batch_size=8)
        requests = [scheduler.submit(student.Request(names[i], max_tokens=lengths[i])) for i in range(concurrency)]
        drain(scheduler)
        measured[concurrency] = (sum(len(r.tokens) for r in requests), model.steps)
    observe([list(pair) for pair in measured.values()])
    rates = {c: tokens / steps for c, (tokens, steps) in measured.items()}
    shown = ", ".join(f"{c} requests: {rate:.2f}" for c, rate in rates.items())
    assert rates[1] < rates[2] < rates[4] < rates[8], f"tokens per step should grow with concurrency: {shown}"
    assert rates[8] >= 4 * rates[1], f"8 concurrent requests should get at least 4x the tokens per step: {shown}"


async def next_token(tokens, loop_task: asyncio.Task, what: str):
    """The stream's next token (None at its end), waiting at most LIMIT seconds; fails with the reason."""
    pending = asyncio.ensure_future(anext(tokens, None))
    done, _ = await asyncio.wait({pending, loop_task}, timeout=LIMIT, return_when=asyncio.FIRST_COMPLETED)
    if pending in done:
        return pending.result()
    pending.cancel()
    if loop_task in done and not loop_task.cancelled() and loop_task.exception() is not None:
        error = loop_task.exception()
        raise AssertionError(f"scheduler.run() died while {what}: {type(error).__name__}: {error}")
    raise AssertionError(f"no token arrived within {LIMIT:g} s while {what}: does step() deliver a token to "
                         f"every running request?")


@points(2, hint="Each step hands out one token to every running request, so the streams of concurrent "
                "requests interleave; run() and stream() are given, step() does the work.")
def test_streams_overlap_in_the_event_loop(student, rng, observe) -> None:
    names = new_ids(rng, rng.randint(3, 4))
    lengths = {name: rng.randint(3, 6) for name in names}

    async def main() -> tuple[dict[str, list[int]], list[str]]:
        model = student.FakeModel()
        scheduler = student.Scheduler(model, max_batch_size=4)
        loop_task = asyncio.create_task(scheduler.run())
        received: list[str] = []          # whose token arrived, in arrival order

        async def consume(name: str) -> list[int]:
            request = scheduler.submit(student.Request(name, max_tokens=lengths[name]))
            tokens, stream = [], scheduler.stream(request)
            while (token := await next_token(stream, loop_task, f"stream {name!r} had {len(tokens)} of "
                                                                f"{lengths[name]} tokens")) is not None:
                received.append(name)
                tokens.append(token)
                assert len(tokens) <= lengths[name], (f"stream {name!r} yielded more than its max_tokens="
                                                      f"{lengths[name]} tokens: does a finished request stay "
                                                      f"in self.running?")
            return tokens

        try:
            replies = await asyncio.gather(*(consume(name) for name in names))
        finally:
            loop_task.cancel()
        return dict(zip(names, replies)), received

    replies, received = asyncio.run(main())
    for name in names:
        want = expected(student, name, lengths[name])
        assert replies[name] == want, f"stream {name!r} should yield {want}, yielded {replies[name]}"
    # Overlap: every stream had its first token before any stream had its last one.
    last_first = max(received.index(name) for name in names)
    first_last = min(len(received) - 1 - received[::-1].index(name) for name in names)
    observe([replies, last_first < first_last])
    assert last_first < first_last, f"the streams did not overlap; tokens arrived in this order: {received}"
