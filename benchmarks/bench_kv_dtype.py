"""The KV cache in float16 or float32 (``--kv-cache-dtype``): a decode step's time, and what the rounding costs.

Why: from 32 rows up a decode step's attention reads every row's keys and values once per layer, and at 64-128
rows that cache no longer fits the CPU's caches, so the attention waits on memory
(``bench_attention.py --layers 30``). A float16 cache halves the bytes read; each key and value is rounded once,
as it is written. This measures both sides in one process, on the embedded model as ``corolab serve`` loads it
(int8 weights, fused kernels):

1. Speed: ms per decode step of ``HFBatch`` at each batch size, float32 and float16 caches in interleaved rounds
   (best round of each), and the ratio.
2. Quality: teacher-forced through decode steps on the float32 cache's own greedy replies to held-out prompts:
   the share of positions where the float16 cache picks the same top token, and the mean loss (nats per token)
   of those replies under each cache (float32's is the floor); then how many free-running greedy replies come
   out identical, token for token.

    python benchmarks/bench_kv_dtype.py                      # about 3 minutes on 2 CPU cores
    python benchmarks/bench_kv_dtype.py --batches 32,128 --rounds 5
"""

from __future__ import annotations

import argparse
import time

import torch

from corolab.serving.backends import load_backend
from corolab.serving.backends.kvcache import empty_cache
from corolab.serving.params import SamplingParams

PROMPTS = ["Tell me a story about a cat.", "What is the capital of France?", "Write a haiku about autumn.",
           "Explain recursion in one paragraph.", "List three prime numbers.", "Who wrote Hamlet?",
           "How do plants make food?", "Give me a tip for learning to cook.", "Why is the sky blue?",
           "Describe a rainy day in a city."]
CACHES = {"float32": None, "float16": torch.float16}


def step_ms(backend, rows: int, steps: int, warm: int) -> float:
    batch = backend.new_batch()
    params = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)
    batch.add_many([(key, backend.encode_chat([{"role": "user", "content": f"{PROMPTS[key % len(PROMPTS)]} ({key})"}]),
                     params) for key in range(rows)])
    for _ in range(warm):
        batch.step()
    started = time.perf_counter()
    for _ in range(steps):
        batch.step()
    return (time.perf_counter() - started) / steps * 1e3


def decode(backend, prompt: list[int], steps: int, forced: list[int] | None = None) -> tuple[list[int], float]:
    """Greedy tokens (or, with ``forced``, the top token at each forced position) and the summed loss of the
    tokens fed, through the lean forward's prefill and decode steps."""
    lean, layers = backend.lean, backend.model.config.num_hidden_layers
    cache, tokens, loss = empty_cache(layers), [], 0.0
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        logits = lean(ids, torch.ones_like(ids), torch.arange(len(prompt))[None], cache)
        for step in range(steps):
            tokens.append(int(logits.argmax()))
            fed = forced[step] if forced is not None else tokens[-1]
            loss += float(torch.nn.functional.cross_entropy(logits.float(), torch.tensor([fed])))
            at = len(prompt) + step
            logits = lean(torch.tensor([[fed]]), torch.ones(1, at + 1, dtype=torch.long), torch.tensor([[at]]), cache)
    return tokens, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="8,32,64,128")
    parser.add_argument("--steps", type=int, default=10, help="timed decode steps per batch and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm", type=int, default=40,
                        help="untimed decode steps first, so the timed ones read a serving-sized cache: ~40-token "
                             "prompts plus this many tokens (bench_serving's replies are 64)")
    parser.add_argument("--tokens", type=int, default=64, help="reply tokens per prompt for the quality check")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    args = parser.parse_args()

    backend = load_backend(None, prefix_cache=False, threads=args.threads or torch.get_num_threads())
    backend.load()
    lean = backend.lean
    if lean is None or lean.kernels is None:
        raise SystemExit("this compares caches under the fused int8 kernels, which are not built here")
    print(f"embedded model, int8, fused kernels, torch {torch.__version__}, {torch.get_num_threads()} threads")

    print(f"\nms per decode step, best of {args.rounds} interleaved rounds ({args.steps} steps each, after "
          f"{args.warm} untimed ones)")
    print(f"{'batch':>6} {'float32':>9} {'float16':>9} {'speed-up':>9}")
    for rows in [int(b) for b in args.batches.split(",")]:
        best = dict.fromkeys(CACHES, float("inf"))
        for _ in range(args.rounds):
            for name, dtype in CACHES.items():
                lean.kv_dtype = dtype
                best[name] = min(best[name], step_ms(backend, rows, args.steps, args.warm))
        print(f"{rows:>6} {best['float32']:>9.1f} {best['float16']:>9.1f} {best['float32'] / best['float16']:>8.2f}x")

    agree = total = same = 0
    losses = dict.fromkeys(CACHES, 0.0)
    for text in PROMPTS:
        prompt = backend.encode_chat([{"role": "user", "content": text}])
        lean.kv_dtype = None
        reference, loss = decode(backend, prompt, args.tokens)
        losses["float32"] += loss
        lean.kv_dtype = torch.float16
        forced, loss = decode(backend, prompt, args.tokens, forced=reference)
        losses["float16"] += loss
        agree += sum(a == b for a, b in zip(forced, reference))
        total += len(reference)
        same += decode(backend, prompt, args.tokens)[0] == reference
    print(f"\nquality over {len(PROMPTS)} prompts x {args.tokens} tokens, teacher-forced on the float32 cache's "
          "greedy replies:")
    print(f"  top token the same as float32's: {agree / total:.1%} of positions")
    print(f"  loss, nats per token: float32 {losses['float32'] / total:.4f}, float16 {losses['float16'] / total:.4f}")
    print(f"  free-running greedy replies identical to float32's: {same} of {len(PROMPTS)}")


if __name__ == "__main__":
    main()
