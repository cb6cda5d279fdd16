"""What the three engines share: loading the backend off the loop, tokenizing off the loop, readiness and
failure, counters, and request ids."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from corolab.serving.backends.base import Backend
from corolab.serving.config import ServeConfig
from corolab.serving.engine.base import Engine, EngineInfo, EngineStats
from corolab.serving.engine.scheduler import cache_bytes
from corolab.serving.params import LimitError, SamplingParams, check_fits

log = logging.getLogger("corolab.serving.engine")


async def load_in_passing_thread(load: Callable[[], None]) -> None:
    """Run ``load`` in a new thread and wait, without blocking the loop, until that thread has ended.

    Why not ``asyncio.to_thread``: its threads live on, and so would the OpenMP thread team torch's parallel
    loading work leaves behind in the thread. libgomp counts every team's threads, and once they outnumber
    the cores its waiting threads stop spinning and sleep between parallel regions, so every small op pays a
    wake-up. Measured on 2 cores with 2 torch threads, a 32-row decode step in the batched engine's worker
    took 158-161 ms with the loader's team alive and 56-58 ms without (``benchmarks/RESULTS.md``, "A second
    look")."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():  # start() was cancelled meanwhile
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        try:
            load()
        except BaseException as exc:  # handed to start(), which raises it
            loop.call_soon_threadsafe(settle, exc)
        else:
            loop.call_soon_threadsafe(settle, None)

    thread = threading.Thread(target=run, name="corolab-load", daemon=True)
    thread.start()
    await done
    await asyncio.to_thread(thread.join)  # the loader's OpenMP team ends with its thread


class BackendEngine(Engine):
    kind = "base"

    def __init__(self, backend: Backend, config: ServeConfig | None = None) -> None:
        super().__init__()
        self.config = (config or ServeConfig()).validate()
        self.backend = backend
        self._ready = False
        self._failure: str | None = None
        self._ids = itertools.count(1)
        self._stats = EngineStats()
        # One thread for the tokenizer: chat templating and tokenizing never run on the event loop, and a
        # single thread keeps a fast tokenizer from being entered by two threads at once.
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corolab-tokenize")

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def info(self) -> EngineInfo:
        b = self.backend.info
        return EngineInfo(engine=self.kind, model_id=b.model_id, context_window=b.context_window, backend=b.backend)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def failure(self) -> str | None:
        return self._failure

    async def start(self) -> None:
        """Load the model off the event loop (it keeps answering /health meanwhile), in a thread that ends
        when the model is loaded."""
        await load_in_passing_thread(self.backend.load)
        self._closed_retry_after = None  # a restarted engine admits again
        self._ready = True

    async def stop(self) -> None:
        self._ready = False

    def stats(self) -> EngineStats:
        snapshot = EngineStats(**vars(self._stats))
        snapshot.prefix_hits = self.backend.prefix_hits
        return snapshot

    async def tokenize(self, messages: Sequence[dict[str, str]]) -> list[int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizer_thread, self.backend.encode_chat, list(messages))

    def _admit(self, prompt: list[int], params: SamplingParams) -> int:
        """The checks every engine makes before taking a request; returns its new key."""
        self.check_ready()
        check_fits(len(prompt), params.max_tokens, self.backend.info.context_window)  # LimitError: 400
        self._check_kv_alone(len(prompt), params.max_tokens)
        return next(self._ids)

    def _check_kv_alone(self, prompt_tokens: int, reply_tokens: int) -> None:
        """A request whose own KV cache would pass ``--kv-cache-gib`` could never join a batch: refuse it now
        (400), instead of queueing it for ever. The batch's share is the scheduler's to count."""
        per_token = self.backend.info.kv_bytes_per_token
        need = cache_bytes(1, prompt_tokens + reply_tokens, per_token)
        budget = self.config.kv_cache_bytes
        if need > budget:
            most = budget // per_token - prompt_tokens
            raise LimitError(
                f"the prompt ({prompt_tokens} tokens) and a reply of up to {reply_tokens} tokens need "
                f"{need / 2**30:.2f} GiB of KV cache; this server allows {self.config.kv_cache_gib:g} GiB "
                f"(--kv-cache-gib)" + (f": ask for at most {most} max_tokens" if most > 0 else ""),
                param="max_tokens" if most > 0 else "messages")

    def _fail_engine(self, exc: BaseException) -> None:
        """The engine cannot go on: remember why (for /health), and log the traceback."""
        self._failure = f"{type(exc).__name__}: {str(exc)[:200]}"
        self._ready = False
        log.error("the %s engine's worker stopped", self.kind, exc_info=exc)

    def _finished(self, completion_tokens: int) -> None:
        self._stats.requests_finished += 1
        self._stats.tokens_generated += completion_tokens
