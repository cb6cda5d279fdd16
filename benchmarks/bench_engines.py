"""How much does each scheduler get out of the model? naive vs threads vs batched vs a bare loop.

One run, one process, on the embedded model (SmolLM2-135M-Instruct):

* the **ceiling**: a bare loop of forward steps with a KV cache at batch size B (B identical prompts, one
  prefill, then greedy decode steps): what the hardware gives with no serving at all;
* each engine at concurrency 1, 8 and 32: that many requests at once, each generating exactly
  ``--tokens`` tokens (``ignore_eos``, as in vLLM's benchmarks, so every engine does the same work),
  driven through ``engine.generate`` from asyncio (no HTTP: that is ``corolab bench``'s job);
* the fake backend through the batched engine: the serving overhead alone, with no model cost.

It prints tokens/s and ratios; absolute numbers on a shared machine are noise, ratios are the result.
The last line is the headline: batched tokens/s at the highest concurrency divided by the ceiling at the
same batch size.

    python benchmarks/bench_engines.py                    # the full run (several minutes: naive is slow)
    python benchmarks/bench_engines.py --tokens 16 --concurrency 1,4   # a quick look
    python benchmarks/bench_engines.py --dtype bfloat16 --engines naive,batched
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import time
import warnings
from collections.abc import Callable

from corolab.serving.backends import load_backend
from corolab.serving.backends.base import Backend
from corolab.serving.engine import SamplingParams, create_engine

TOPICS = ("the sea", "a lighthouse keeper", "coroutines", "a city at night", "bread", "mountains", "rain",
          "a library", "trains", "the moon", "an old clock", "gardens")


def prompts(n: int) -> list[list[dict[str, str]]]:
    """Different prompts of different lengths, as real traffic has (so the batched cache is padded)."""
    return [[{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}." + " Please." * (i % 5)}]
            for i in range(n)]


def in_own_thread(measure: Callable[[], float]) -> float:
    """Run one measurement in a thread that ends with it.

    Why: torch's CPU kernels run on OpenMP (libgomp), which keeps a team of helper threads for every thread
    that ever ran a parallel kernel. While such a thread is alive, another thread's model steps run slower:
    on the 2-core test machine, batch-1 decoding in the batched engine's worker dropped from ~45 to ~28
    tokens/s after the main thread had run the bare loop. The server never computes on its event-loop
    thread except in the naive engine, so here no measurement may either: each gets a thread of its own.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(measure).result()


def ceiling(backend, batch_size: int, tokens: int) -> float:
    """Tokens/s of a bare prefill + decode loop (transformers' own DynamicCache, greedy, no padding)."""
    import torch
    from transformers import DynamicCache

    model, cache_kwarg = backend.model, backend.cache_kwarg
    ids = torch.tensor([backend.encode_chat(prompts(1)[0])] * batch_size)
    started = time.perf_counter()
    with torch.inference_mode():
        cache = DynamicCache()  # updated in place by every forward pass
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(tokens - 1):
            out = model(input_ids=token, use_cache=True, **{cache_kwarg: cache})
            token = out.logits[:, -1].argmax(-1, keepdim=True)
    return batch_size * tokens / (time.perf_counter() - started)


async def through_engine(kind: str, backend: Backend, concurrency: int, tokens: int) -> float:
    engine = create_engine(kind, backend, max_batch_size=max(32, concurrency))
    await engine.start()
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)

    async def one(messages) -> int:
        count = 0
        async for delta in engine.generate(messages, params):
            count = delta.completion_tokens
        return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(m) for m in prompts(concurrency)))
    seconds = time.perf_counter() - started
    await engine.stop()
    assert all(c == tokens for c in counts), counts
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request (default 64)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default 1,8,32)")
    parser.add_argument("--engines", default="naive,threads,batched")
    parser.add_argument("--repeat", type=int, default=2,
                        help="interleaved rounds per level; each variant's best counts (default 2)")
    parser.add_argument("--model", default=None, help="model id or path (default: the embedded SmolLM2)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="model dtype (default auto: float32 on a CPU)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    kinds = args.engines.split(",")
    warnings.simplefilter("ignore")  # transformers' deprecation chatter is not a result

    fake_rate = asyncio.run(through_engine("batched", load_backend("fake"), 32, 64))
    print(f"fake backend, batched engine, c=32, 64 tokens each: {fake_rate:,.0f} tokens/s (serving overhead only)")

    real = load_backend(args.model, dtype=args.dtype)
    real.load()
    import torch
    print(f"model: {real.info.model_id} on {real.info.device} ({real.info.dtype}), torch threads: "
          f"{torch.get_num_threads()}, {args.tokens} tokens per request")
    in_own_thread(lambda: ceiling(real, 1, 4))  # warm up
    # Other work on a shared machine only ever slows a run down, so the best of a few runs is the least
    # noisy estimate. The runs are interleaved: each round measures every variant at one level before the
    # next round starts, so a machine that slows down halfway (a busy neighbour) slows all of them alike
    # instead of whichever variant happened to run last. naive and threads take minutes at c > 1 and are
    # far from the others there, so beyond c=1 they run in the first round only.
    variants: dict[str, Callable[[int], float]] = {"ceiling": lambda c: ceiling(real, c, args.tokens)}
    for kind in kinds:
        variants[kind] = lambda c, kind=kind: asyncio.run(through_engine(kind, real, c, args.tokens))
    rows: dict[str, dict[int, float]] = {name: {} for name in variants}
    for c in levels:
        for round_ in range(args.repeat):
            for name, measure in variants.items():
                if round_ and c > 1 and name in ("naive", "threads"):
                    continue
                rate = in_own_thread(lambda: measure(c))
                rows[name][c] = max(rate, rows[name].get(c, 0.0))
                print(f"  round {round_ + 1} c={c} {name}: {rate:.1f} tokens/s", flush=True)

    print(f"\n{'tokens/s':<14}" + "".join(f"{'c=' + str(c):>10}" for c in levels))
    for name, rates in rows.items():
        print(f"{name:<14}" + "".join(f"{rates[c]:>10.1f}" for c in levels))
    for kind in kinds:
        print(f"{kind + '/ceil':<14}" + "".join(f"{rows[kind][c] / rows['ceiling'][c]:>10.2f}" for c in levels))
    if "batched" in rows and "naive" in rows:
        print(f"{'batched/naive':<14}" + "".join(f"{rows['batched'][c] / rows['naive'][c]:>10.2f}" for c in levels))
    top = levels[-1]
    if "batched" in rows:
        print(f"headline: batched / bare loop at c={top}: {rows['batched'][top] / rows['ceiling'][top]:.2f}")


if __name__ == "__main__":
    main()
