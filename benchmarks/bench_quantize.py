"""The weight-quantization lever, measured: speed of one engine step and what it costs in quality.

Variants of the embedded SmolLM2-135M-Instruct, each loaded in this process:

* ``float32``: what ``--quantize none`` serves on a CPU;
* ``float32/hf``: the same through transformers' own forward instead of ``LlamaForward`` (the Python-per-step lever);
* ``bfloat16``: ``--dtype bfloat16`` (float weights);
* ``int8``: int8 weights and per-token int8 activations (``corolab.serving.backends.cpu.quantize``), without smoothing;
* ``int8+smooth``: the same after SmoothQuant factors are folded in: what ``--quantize int8`` (the CPU default) serves;
* ``int8+smooth/batched``: ``--attention batched``: ``LlamaForward`` with one attention call for the batch;
* ``int8+smooth/hf``: that, through transformers' forward (batched attention: not bit-exact across batches);
* ``int4``, ``int4+smooth``: 4-bit weights in the blocks (``Int4Linear``, the LM head int8), without and with the
  smoothing; ``int4`` is what ``--quantize int4`` serves (smoothing moves range into the weights, which costs
  4-bit ones more than it gives the int8 activations);
* ``ao-dynamic``: ``torch.ao.quantization.quantize_dynamic`` (fbgemm, one activation scale per batch), for reference.

Speed: milliseconds per decode step of ``HFBatch`` at batch 1, 8 and 32 (best of ``--rounds`` interleaved rounds, so
every variant sees the same machine), and the seconds it took to load (quantizing included). Memory is measured per
server process in bench_serving.py (one process per variant there; here they share one). Quality: teacher-forced on float32's own
greedy replies to held-out prompts (not the calibration text): the share of positions where the variant's top token is
float32's, and the mean loss (nats per token) of those replies; lower is better, float32's is the floor.

    python benchmarks/bench_quantize.py                 # about 5 minutes on 2 CPU cores
    python benchmarks/bench_quantize.py --threads 2
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings

import torch

from corolab.serving.backends import embedded
from corolab.serving.backends.hf import HFBackend
from corolab.serving.config import ModelConfig
from corolab.serving.params import SamplingParams

PROMPTS = ["Tell me a story about a cat.", "What is the capital of France?", "Write a haiku about autumn.",
           "Explain recursion in one paragraph.", "List three prime numbers.", "Who wrote Hamlet?"]
VARIANTS = ("float32", "float32/hf", "bfloat16", "int8", "int8+smooth", "int8+smooth/batched", "int8+smooth/hf",
            "int4", "int4+smooth", "ao-dynamic")


def load(variant: str) -> HFBackend:
    base, _, forward = variant.partition("/")
    dtype = "bfloat16" if base == "bfloat16" else "float32"
    quantize = {"int8": "int8-nosmooth", "int8+smooth": "int8", "int4": "int4",
                "int4+smooth": "int4-smooth"}.get(base, "none")
    config = ModelConfig(model=str(embedded.ensure_converted()), dtype=dtype, quantize=quantize, prefix_cache=False)
    backend = HFBackend(config)
    backend.load()
    if forward == "hf":
        backend.lean = None
    elif forward == "batched":
        from corolab.serving.backends.cpu.llama_forward import LlamaForward

        backend.lean = LlamaForward(backend.model, exact=False)
    if variant == "ao-dynamic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backend.model = torch.ao.quantization.quantize_dynamic(backend.model, {torch.nn.Linear}, dtype=torch.qint8)
        from corolab.serving.backends.cpu.llama_forward import LlamaForward

        backend.lean = LlamaForward(backend.model)
    return backend


def step_ms(backend: HFBackend, rows: int, steps: int = 12) -> float:
    batch = backend.new_batch()
    params = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)
    batch.add_many([(k, backend.encode_chat([{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}]), params)
                    for k in range(rows)])
    for _ in range(3):
        batch.step()
    started = time.perf_counter()
    for _ in range(steps):
        batch.step()
    return (time.perf_counter() - started) / steps * 1e3


def references(backend: HFBackend, tokens: int) -> list[tuple[int, torch.Tensor]]:
    """float32's greedy replies: (prompt length, prompt + reply ids)."""
    out = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = torch.tensor([backend.encode_chat([{"role": "user", "content": prompt}])])
            reply = backend.model.generate(ids, max_new_tokens=tokens, do_sample=False, min_new_tokens=tokens)
            out.append((ids.shape[1], reply))
    return out


def quality(backend: HFBackend, refs: list[tuple[int, torch.Tensor]]) -> tuple[float, float]:
    agree = total = 0
    loss = 0.0
    with torch.inference_mode():
        for start, ids in refs:
            logits = backend.model(input_ids=ids).logits[0, start - 1:-1].float()
            target = ids[0, start:]
            agree += int((logits.argmax(-1) == target).sum())
            total += len(target)
            loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
    return agree / total, loss / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: corolab's default here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    levels = (1, 8, 32)
    rss, qual, best = {}, {}, {v: {c: float("inf") for c in levels} for v in variants}
    refs = references(load("float32"), 48)
    backends = {}
    for variant in variants:
        gc.collect()
        started = time.perf_counter()
        backends[variant] = load(variant)
        rss[variant] = time.perf_counter() - started
        qual[variant] = quality(backends[variant], refs)
    for round_ in range(args.rounds):
        for c in levels:
            for variant in variants:
                best[variant][c] = min(best[variant][c], step_ms(backends[variant], c))
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    print(f"\ntorch threads {args.threads}; ms per decode step (best of {args.rounds}), tokens/s in brackets")
    print(f"{'variant':20}" + "".join(f"{'batch ' + str(c):>20}" for c in levels)
          + f"{'load s':>8}{'top-1 agree':>13}{'loss':>8}")
    for variant in variants:
        cells = "".join(f"{best[variant][c]:9.1f} ({c * 1e3 / best[variant][c]:6.1f})" + " " * 2 for c in levels)
        print(f"{variant:20}{cells}{rss[variant]:8.1f}"
              f"{qual[variant][0]:13.3f}{qual[variant][1]:8.4f}")
    base = best["float32"]
    for variant in variants[1:]:
        print(f"{variant} / float32 speed: " + ", ".join(f"batch {c} {base[c] / best[variant][c]:.2f}x" for c in levels))


if __name__ == "__main__":
    main()
