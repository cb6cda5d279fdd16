"""The three schedulers behind one contract, on the fake backend (and a few checks on the real model).

Concurrency is asserted by the order of events, never by wall time: a recording backend logs every
prefill and decode step (which request, from which thread), and a gate holds the first decode step until
the test has put a second request in place.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from corolab.serving.backends.base import Batch
from corolab.serving.backends.fake import FakeBackend
from corolab.serving.engine import (
    ENGINE_KINDS, EngineError, EngineNotReadyError, LimitError, QueueFullError, SamplingParams, create_engine,
)

CHAT = [{"role": "user", "content": "你好，世界! hello"}]
REPLY = "You said: 你好，世界! hello"


class RecordingBackend(FakeBackend):
    """The fake backend, plus a log of ("add"|"step"|"remove", keys) and an optional gate on decode steps."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log: list[tuple[str, tuple[int, ...]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def new_batch(self) -> Batch:
        return _RecordingBatch(self, super().new_batch())

    def record(self, what: str, keys: Sequence[int]) -> None:
        with self._lock:
            self.log.append((what, tuple(sorted(keys))))


class _RecordingBatch(Batch):
    def __init__(self, backend: RecordingBackend, inner: Batch) -> None:
        super().__init__()
        self.b, self.inner, self.keys = backend, inner, set()

    def add_many(self, items):
        for key, _, _ in items:
            self.keys.add(key)
            self.b.record("add", [key])
        return self.inner.add_many(items)

    def step(self):
        assert self.b.gate.wait(timeout=10), "the test never opened the gate"
        out = self.inner.step()
        self.b.record("step", list(out))
        return out

    def remove(self, key):
        if key in self.keys:
            self.keys.discard(key)
            self.b.record("remove", [key])
        self.inner.remove(key)

    def __len__(self):
        return len(self.inner)


async def started(kind: str, backend=None, **kwargs):
    engine = create_engine(kind, backend or FakeBackend(), **kwargs)
    await engine.start()
    return engine


async def collect(engine, messages=CHAT, **params):
    return [d async for d in engine.generate(messages, SamplingParams(**params))]


def text_of(deltas) -> str:
    return "".join(d.text for d in deltas)


async def wait_for(predicate, what: str) -> None:
    """Let other tasks run until ``predicate()`` holds (bounded: a broken engine fails, never hangs)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"timed out waiting for {what}")


# ---- the contract, for every engine ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ENGINE_KINDS)
async def test_reply_usage_and_finish(kind):
    engine = await started(kind)
    deltas = await collect(engine)
    assert text_of(deltas) == REPLY
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].completion_tokens == len(REPLY.encode())  # the fake's tokens are UTF-8 bytes
    assert deltas[-1].prompt_tokens == len(FakeBackend().encode_chat(CHAT))
    assert "\ufffd" not in text_of(deltas)  # never half a Chinese character
    stats = engine.stats()
    assert (stats.running, stats.requests_finished, stats.tokens_generated) == (0, 1, len(REPLY.encode()))
    assert engine.info.engine == kind and engine.info.backend == "fake"
    await engine.stop()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
async def test_max_tokens_ends_with_length(kind):
    engine = await started(kind)
    deltas = await collect(engine, max_tokens=5)
    assert text_of(deltas) == REPLY[:5]
    assert (deltas[-1].finish_reason, deltas[-1].completion_tokens) == ("length", 5)
    await engine.stop()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
async def test_ignore_eos_runs_to_max_tokens(kind):
    engine = await started(kind)
    deltas = await collect(engine, max_tokens=100, ignore_eos=True)
    assert (deltas[-1].finish_reason, deltas[-1].completion_tokens) == ("length", 100)
    assert text_of(deltas).startswith(REPLY + " " + REPLY[:10])  # the fake says it again
    await engine.stop()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
async def test_stop_sequence_is_never_streamed(kind):
    engine = await started(kind)
    deltas = await collect(engine, stop=("said",))
    assert text_of(deltas) == "You "
    assert deltas[-1].finish_reason == "stop"
    assert not any("s" in d.text for d in deltas)  # "s", "sa", "sai" were held back, then dropped
    chinese = await collect(engine, stop=("世界",))
    assert text_of(chinese) == "You said: 你好，"
    await engine.stop()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
async def test_seeded_sampling_is_reproducible(kind):
    engine = await started(kind)
    replies = {seed: text_of(await collect(engine, temperature=1.0, seed=seed)) for seed in range(8)}
    again = {seed: text_of(await collect(engine, temperature=1.0, seed=seed)) for seed in range(8)}
    assert replies == again
    assert len(set(replies.values())) > 1  # the seed matters
    await engine.stop()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
async def test_errors_come_before_the_first_delta(kind):
    engine = create_engine(kind, FakeBackend(context_window=64))
    with pytest.raises(EngineNotReadyError):
        await collect(engine)
    await engine.start()
    with pytest.raises(LimitError):
        await collect(engine, messages=[{"role": "user", "content": "x" * 100}])
    assert text_of(await collect(engine, messages=[{"role": "user", "content": "hi"}])) == "You said: hi"
    await engine.stop()


class BrokenBackend(RecordingBackend):
    """Its first decode step raises, as a model would on running out of memory."""

    def new_batch(self) -> Batch:
        batch = super().new_batch()
        step = batch.step

        def failing_once():
            if not getattr(self, "failed", False):
                self.failed = True
                raise RuntimeError("out of memory")
            return step()

        batch.step = failing_once
        return batch


@pytest.mark.parametrize("kind", ["threads", "batched"])
async def test_a_failed_step_fails_its_requests_not_the_engine(kind):
    engine = await started(kind, BrokenBackend())
    with pytest.raises(EngineError) as failed:
        await collect(engine)
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert text_of(await collect(engine)) == REPLY  # the next request is served normally
    await engine.stop()


class LoadRecordingBackend(FakeBackend):
    """Remembers which thread loaded it; optionally fails to load, as a missing checkpoint would."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.error = error
        self.loaded_by: threading.Thread | None = None

    def load(self) -> None:
        self.loaded_by = threading.current_thread()
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize("kind", ENGINE_KINDS)
async def test_the_loading_thread_is_gone_when_start_returns(kind):
    """The model loads off the event loop, in a thread that has ended by the time the engine is ready: a
    loader left alive keeps torch's OpenMP team alive with it, and the model's threads then sleep between ops
    (see corolab.serving.engine.common.load_in_passing_thread)."""
    backend = LoadRecordingBackend()
    engine = await started(kind, backend)
    assert backend.loaded_by is not None and backend.loaded_by is not threading.current_thread()
    assert not backend.loaded_by.is_alive()
    assert text_of(await collect(engine)) == REPLY
    await engine.stop()


async def test_a_failed_load_is_raised_by_start():
    engine = create_engine("batched", LoadRecordingBackend(error=FileNotFoundError("no weights here")))
    with pytest.raises(FileNotFoundError, match="no weights here"):
        await engine.start()
    assert not engine.ready


def test_unknown_engine_kind():
    with pytest.raises(ValueError, match="naive"):
        create_engine("magic", FakeBackend())


# ---- who waits for whom ------------------------------------------------------------------------------


async def test_naive_serializes_requests_and_blocks_the_loop():
    backend = RecordingBackend()
    engine = await started("naive", backend)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def consume(name, log):
        async for d in engine.generate(CHAT, SamplingParams()):
            log.append((name, d.finish_reason, ticks))

    tick_task = asyncio.create_task(ticker())
    log: list = []
    await asyncio.gather(consume("a", log), consume("b", log))
    tick_task.cancel()
    names = [name for name, _, _ in log]
    assert names == sorted(names)  # every delta of a before any of b
    assert len({t for name, _, t in log if name == "a"}) == 1  # the loop ran nothing else during a's reply
    adds = [i for i, (what, _) in enumerate(backend.log) if what == "add"]
    assert adds[1] > max(i for i, (what, k) in enumerate(backend.log) if what == "step" and k == backend.log[adds[0]][1])


@pytest.mark.parametrize("kind", ["threads", "batched"])
async def test_requests_overlap(kind):
    """A second request starts while the first is mid-reply, and the event loop stays free."""
    backend = RecordingBackend()
    engine = await started(kind, backend)
    backend.gate.clear()  # hold the first decode step
    a = engine.generate(CHAT, SamplingParams())
    first_a = await anext(a)
    b_task = asyncio.create_task(collect(engine))
    await wait_for(lambda: engine.stats().waiting + engine.stats().running >= 2, "the second request")
    backend.gate.set()
    rest_a = [d async for d in a]
    b = await b_task
    assert text_of([first_a, *rest_a]) == REPLY and text_of(b) == REPLY
    adds = [k for what, k in backend.log if what == "add"]
    first_a_key, b_key = adds[0][0], adds[1][0]
    a_steps = [i for i, (what, k) in enumerate(backend.log) if what == "step" and first_a_key in k]
    b_add = backend.log.index(("add", (b_key,)))
    assert backend.log.index(("add", (first_a_key,))) < b_add < a_steps[-1]  # b joined while a still ran
    if kind == "batched":
        assert ("step", tuple(sorted((first_a_key, b_key)))) in backend.log  # one step served both
    await engine.stop()


async def one_running_one_waiting(backend: RecordingBackend, **engine_kwargs):
    """A batched engine with one slot: request a has its first delta and holds the slot (its next step is
    gated), request b (a task collecting its reply) waits for the slot."""
    engine = await started("batched", backend, max_batch_size=1, **engine_kwargs)
    backend.gate.clear()
    a = engine.generate(CHAT, SamplingParams())
    await anext(a)
    b_task = asyncio.create_task(collect(engine))
    await wait_for(lambda: engine.stats().waiting == 1, "b to wait for the only slot")
    return engine, a, b_task


async def test_batched_cancel_frees_the_slot_at_once():
    backend = RecordingBackend()
    engine, a, b_task = await one_running_one_waiting(backend)
    await a.aclose()  # the client went away
    backend.gate.set()
    b = await b_task
    assert text_of(b) == REPLY
    removes = [k[0] for what, k in backend.log if what == "remove"]
    a_key = backend.log[0][1][0]
    assert removes[0] == a_key
    a_steps = [i for i, (what, k) in enumerate(backend.log) if what == "step" and a_key in k]
    assert len(a_steps) <= 1  # a stopped after the step that was running when it left
    assert backend.log.index(("remove", (a_key,))) < [i for i, (w, _) in enumerate(backend.log) if w == "add"][1]
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.requests_finished) == (0, 0, 2)
    await engine.stop()


async def test_batched_queue_full_and_cancel_while_waiting():
    backend = RecordingBackend()
    engine = await started("batched", backend, max_batch_size=1, max_waiting=1)
    backend.gate.clear()
    a = engine.generate(CHAT, SamplingParams())
    await anext(a)
    b = engine.generate(CHAT, SamplingParams())
    b_task = asyncio.create_task(anext(b))
    await wait_for(lambda: engine.stats().waiting == 1, "b to wait")
    with pytest.raises(QueueFullError) as full:
        await collect(engine)
    assert full.value.retry_after > 0
    b_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b_task
    await b.aclose()
    assert engine.stats().waiting == 0  # left the queue without ever running
    backend.gate.set()
    assert text_of([d async for d in a]) == REPLY[1:]
    assert [k for what, k in backend.log if what == "add"] == [backend.log[0][1]]
    await engine.stop()


async def test_batched_per_request_sampling_in_one_batch():
    """Different settings share steps, and each request gets exactly what it would get alone."""
    settings = [dict(max_tokens=7), dict(stop=("世",)), dict(temperature=1.0, seed=3), dict()]
    chats = [[{"role": "user", "content": text}] for text in ("short", "你好，世界", "seeded", "x" * 40)]
    alone = await started("naive")
    expected = [text_of(await collect(alone, c, **s)) for c, s in zip(chats, settings)]
    backend = RecordingBackend()
    engine = await started("batched", backend)
    backend.gate.clear()
    tasks = [asyncio.create_task(collect(engine, c, **s)) for c, s in zip(chats, settings)]
    await wait_for(lambda: engine.stats().running + engine.stats().waiting == 4, "all four requests")
    backend.gate.set()
    got = [text_of(d) for d in await asyncio.gather(*tasks)]
    assert got == expected
    assert max(len(k) for what, k in backend.log if what == "step") == 4
    await engine.stop()


async def test_step_listeners_see_batch_sizes():
    backend = RecordingBackend()
    engine = await started("batched", backend)
    sizes: list[int] = []
    engine.step_listeners.append(lambda size, seconds: sizes.append(size))
    backend.gate.clear()
    tasks = [asyncio.create_task(collect(engine)) for _ in range(3)]
    await wait_for(lambda: engine.stats().running + engine.stats().waiting == 3, "three requests")
    backend.gate.set()
    await asyncio.gather(*tasks)
    steps = [k for what, k in backend.log if what == "step"]
    assert sizes == [len(k) for k in steps] and 3 in sizes
    await engine.stop()


async def test_batched_stop_fails_pending_requests():
    backend = RecordingBackend()
    engine, a, b_task = await one_running_one_waiting(backend)
    stopping = asyncio.create_task(engine.stop())
    await wait_for(lambda: not engine.ready, "the engine to begin stopping")
    backend.gate.set()
    await stopping
    with pytest.raises(EngineNotReadyError):
        [d async for d in a]  # a was running: it ends with an error, not silence
    with pytest.raises(EngineNotReadyError):
        await b_task  # b never started


# ---- the real model ----------------------------------------------------------------------------------


def _greedy_alone(backend, prompt, n):
    batch = backend.new_batch()
    tokens = [batch.add(0, prompt, SamplingParams(temperature=0))]
    tokens += [batch.step()[0] for _ in range(n - 1)]
    return tokens


@pytest.mark.model
def test_greedy_in_a_mixed_batch_equals_greedy_alone(smol):
    """Left padding, joining mid-flight and leaving early must not change any row's greedy tokens."""
    chats = [[{"role": "user", "content": c}] for c in (
        "Hi", "Write one sentence about the sea.", "你好，请介绍一下你自己。", "List three colours.")]
    prompts = [smol.encode_chat(c) for c in chats]
    n = 12
    expected = [_greedy_alone(smol, p, n) for p in prompts]
    batch = smol.new_batch()
    greedy = SamplingParams(temperature=0)
    first = batch.add_many([(0, prompts[0], greedy), (1, prompts[1], greedy)])  # one padded prefill
    got = {key: [token] for key, token in first.items()}
    for step in range(n + 6):
        if step == 3:  # a long prompt joins a batch already 3 tokens in
            got[2] = [batch.add(2, prompts[2], greedy)]
        if step == 5:
            got[3] = [batch.add(3, prompts[3], greedy)]
        for key, token in batch.step().items():
            got[key].append(token)
            if len(got[key]) == n:
                batch.remove(key)  # leaving rows must not disturb the others
        if not len(batch):
            break
    assert [got[k] for k in range(4)] == expected


@pytest.mark.model
async def test_batched_engine_matches_naive_on_the_model(smol):
    chats = [[{"role": "user", "content": c}] for c in ("Say hello.", "What is 2+2? Answer briefly.")]
    naive = create_engine("naive", smol)
    await naive.start()
    expected = [text_of(await collect(naive, c, temperature=0, max_tokens=10)) for c in chats]
    batched = create_engine("batched", smol)
    await batched.start()
    got = await asyncio.gather(*(collect(batched, c, temperature=0, max_tokens=10) for c in chats))
    assert [text_of(d) for d in got] == expected
    assert all(d[-1].completion_tokens <= 10 for d in got)
    await batched.stop()


@pytest.mark.model
def test_a_prompt_prefilled_in_chunks_gives_the_same_greedy_tokens(smol):
    """Chunked prefill (the scheduler's prefill budget) is exact: the row's cache grows chunk by chunk and
    joins a batch that is already decoding, and its tokens are what the whole prompt gives alone."""
    from corolab.serving.backends.base import PrefillChunk

    long_prompt = smol.encode_chat([{"role": "user", "content": "Tell me about rivers. " * 24}])
    short = smol.encode_chat([{"role": "user", "content": "Hi"}])
    n = 8
    expected = _greedy_alone(smol, long_prompt, n)
    greedy = SamplingParams(temperature=0)
    batch = smol.new_batch()
    got = {0: [batch.add(0, short, greedy)]}
    step = 20
    for start in range(0, len(long_prompt), step):
        end = min(start + step, len(long_prompt))
        outcome = batch.prefill([PrefillChunk(1, long_prompt, start, end, greedy)])
        if end < len(long_prompt):
            assert outcome == {}                     # not complete yet: no token, the row has not joined
            # the row's own cache grows to the prompt's length and no further (doubling took up to 2x)
            assert batch._pending[1].layers[0]._k.shape[-2] <= len(long_prompt)
        else:
            got[1] = [outcome[1]]
        for key, token in batch.step().items():      # the running row decodes between chunks
            got[key].append(token)
    while len(got[1]) < n:
        got[1].append(batch.step()[1])
    assert got[1] == expected
    assert len(long_prompt) > 3 * step


@pytest.mark.model
def test_the_tokenizers_stream_decoder_matches_the_hand_written_one(smol):
    """DecodeStream (the library's) and IncrementalDetokenizer (the chapter's) stream the same text,
    including Chinese characters split across tokens."""
    from corolab.serving.engine.detok import IncrementalDetokenizer

    text = "Hello, 世界! Ünïcödé — naïve café. 你好，请介绍一下你自己。"
    ids = smol.tokenizer(text, add_special_tokens=False)["input_ids"]
    library, ours = smol.new_detokenizer(), IncrementalDetokenizer(smol.decode)
    assert library is not None
    a = [library.push(t) for t in ids]
    b = [ours.push(t) for t in ids]
    assert "".join(a) == "".join(b) == smol.decode(ids)
    assert all("\ufffd" not in piece for piece in a)


@pytest.mark.model
async def test_a_seed_the_sampler_refuses_fails_that_request_alone(smol):
    """The protocol refuses such a seed with 400; the engine must hold even if one gets through."""
    engine = create_engine("batched", smol)
    await engine.start()
    chat = [{"role": "user", "content": "Say hello."}]

    async def run(seed):
        return await collect(engine, chat, temperature=0.7, seed=seed, max_tokens=4)

    try:
        results = await asyncio.gather(run(1), run(2**70), run(3), return_exceptions=True)
    finally:
        await engine.stop()
    assert isinstance(results[1], EngineError)
    assert all(isinstance(r, list) and r[-1].finish_reason for r in (results[0], results[2]))


async def test_threads_engine_counts_a_request_finished_with_its_last_delta():
    """Whoever reads a reply's last delta sees the engine's stats already updated. They used to be updated
    only when the request's thread had finished cleaning up, so a reader could see a complete reply that the
    engine still counted as running. Here the clean-up is held until the stats have been read."""

    backend = FakeBackend()
    release = threading.Event()
    make_batch = backend.new_batch

    def new_batch():
        batch = make_batch()
        remove = batch.remove

        def held_remove(key):
            release.wait(5)
            remove(key)

        batch.remove = held_remove
        return batch

    backend.new_batch = new_batch
    engine = await started("threads", backend)
    deltas = await collect(engine)
    stats = engine.stats()
    release.set()
    assert deltas[-1].finish_reason == "stop"
    assert (stats.running, stats.requests_finished) == (0, 1)
    await engine.stop()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
async def test_a_request_whose_kv_cache_could_never_fit_is_refused_before_it_queues(kind):
    engine = await started(kind, FakeBackend(kv_bytes_per_token=2**20), kv_cache_gib=0.25)  # 256 token columns
    prompt = len(await engine.tokenize(CHAT))
    with pytest.raises(LimitError, match="--kv-cache-gib") as refused:
        await collect(engine, max_tokens=257 - prompt)
    assert refused.value.param == "max_tokens"
    assert f"at most {256 - prompt} max_tokens" in str(refused.value)
    assert text_of(await collect(engine, max_tokens=256 - prompt, ignore_eos=True)).startswith(REPLY)
    assert (engine.stats().running, engine.stats().waiting) == (0, 0)
    await engine.stop()


async def test_the_batched_engine_admits_no_more_rows_than_the_kv_budget_holds():
    """Eight requests of 100 columns at 1 MiB a column against 0.25 GiB: never more than two rows at once, and
    every request is answered in full."""
    backend = FakeBackend(step_delay=0.002, kv_bytes_per_token=2**20)
    engine = await started("batched", backend, kv_cache_gib=0.25, max_batch_size=8)
    prompt = len(await engine.tokenize(CHAT))
    widths: list[int] = []
    engine.scheduler.plan_listeners.append(
        lambda plan: widths.append(len(plan.decode) + sum(not c.last for c in plan.prefill)))
    replies = await asyncio.gather(*(collect(engine, max_tokens=100 - prompt, ignore_eos=True) for _ in range(8)))
    assert all(text_of(r).startswith(REPLY) for r in replies)
    assert max(widths) == 2  # two fit (2 x 100 x 1 MiB < 0.25 GiB), three would not; rows were free
    await engine.stop()


@pytest.mark.model
def test_prompts_of_one_length_share_an_attention_call_and_match_alone_bit_for_bit(smol):
    """Exact prefill groups rows with as many keys and new tokens into one SDPA call: every layer's keys and
    values, and the first token, must be what the prompt gives alone."""
    texts = ("Name a bird.", "Name a fish.", "Name a tree.", "Write one sentence about the sea.")
    prompts = [smol.encode_chat([{"role": "user", "content": text}]) for text in texts]
    assert len(prompts[0]) == len(prompts[1]) == len(prompts[2]) != len(prompts[3])  # a group of 3, and one more
    import torch

    greedy = SamplingParams(temperature=0, max_tokens=4)
    together = smol.new_batch()
    first = together.add_many([(key, prompt, greedy) for key, prompt in enumerate(prompts)])
    for key, prompt in enumerate(prompts):
        alone = smol.new_batch()
        assert alone.add_many([(0, prompt, greedy)]) == {0: first[key]}
        n = len(prompt)
        for mine, its in zip(together._cache.layers, alone._cache.layers):
            assert torch.equal(mine.keys[key, :, -n:], its.keys[0, :, -n:])
            assert torch.equal(mine.values[key, :, -n:], its.values[0, :, -n:])
