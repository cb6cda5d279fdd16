"""4-bit weights (``--quantize int4``) against int8 (the CPU default), speed only, in one process.

Two measurements, each interleaved (int8, int4, int4, int8, ...) so that a busy moment of the machine falls on
both:

1. The layers alone, caches cold: 30 layers of the embedded model's shapes (q/k/v fused 960 x 576, o 576 x 576,
   gate/up fused 3,072 x 576, down 576 x 1,536), each its own weights, run through ``int8_linear`` one after the
   other, as a decode step reads them. The 30 layers (107 MB in int8, 67 MB in 4 bits) do not fit the cache, so
   every pass streams them from memory: what one user's decode step waits on.
2. The model's decode step, loaded both ways as ``corolab serve`` loads it: ms per step at each batch size.

Quality is measured by ``bench_quantize.py`` (variants ``int4`` and ``int4+smooth``); the figures are in
RESULTS.md ("4-bit weights").

    python benchmarks/bench_int4.py                  # rows 1, 8, 32; about 2 minutes on 2 cores
    python benchmarks/bench_int4.py --rows 1,4 --rounds 31
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from profile_step import prompts  # noqa: E402  (30-40-token chat prompts, distinct per row)

from corolab.serving.backends import load_backend  # noqa: E402
from corolab.serving.backends.cpu import kernels  # noqa: E402
from corolab.serving.backends.cpu.quantize import Int4Linear, Int8Linear  # noqa: E402
from corolab.serving.params import SamplingParams  # noqa: E402

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (outputs, inputs) of one layer's matmuls
LAYERS = 30


def layer_stack(cls, ops, rows: int) -> tuple[list, int]:
    """``LAYERS`` layers of :data:`SHAPES` as ``cls`` layers in the kernels' layout, with an input each; and
    their bytes."""
    torch.manual_seed(0)
    stack, size = [], 0
    for _ in range(LAYERS):
        for outputs, inputs in SHAPES:
            layer = cls(torch.nn.Linear(inputs, outputs, bias=False))
            layer.pack(ops)
            args = layer.kernel_args()
            size += sum(t.numel() * t.element_size() for t in args[:3])
            stack.append((args, torch.randn(rows, inputs)))
    return stack, size


def layers_table(ops, rows_list: list[int], rounds: int) -> None:
    print(f"\n{LAYERS} layers of the model's shapes, caches cold: ms per pass (median of {rounds} interleaved rounds)")
    print(f"{'rows':>5} {'int8 ms':>9} {'int4 ms':>9} {'int8 / int4':>12} {'int8 GB/s':>10} {'int4 GB/s':>10}")
    for rows in rows_list:
        stacks = {name: layer_stack(cls, ops, rows) for name, cls in (("int8", Int8Linear), ("int4", Int4Linear))}
        times: dict[str, list[float]] = {name: [] for name in stacks}
        with torch.inference_mode():
            for round_ in range(rounds + 2):
                order = list(stacks) if round_ % 2 == 0 else list(reversed(stacks))
                for name in order:
                    started = time.perf_counter()
                    for args, x in stacks[name][0]:
                        ops.int8_linear(x, *args)
                    if round_ >= 2:  # two warm-up rounds
                        times[name].append(time.perf_counter() - started)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        rate = {name: stacks[name][1] / ms[name] / 1e6 for name in stacks}
        print(f"{rows:5d} {ms['int8']:9.2f} {ms['int4']:9.2f} {ms['int8'] / ms['int4']:11.2f}x "
              f"{rate['int8']:10.1f} {rate['int4']:10.1f}", flush=True)
        del stacks


def step_table(threads: int, batches: list[int], rounds: int, steps: int) -> None:
    backends = {}
    for quantize in ("int8", "int4"):
        backend = load_backend(None, threads=threads, quantize=quantize, prefix_cache=False)
        backend.load()
        backends[quantize] = backend
    torch.set_num_threads(threads)
    print(f"\nthe model's decode step, {threads} threads: ms (median of {rounds} interleaved rounds of {steps} steps)")
    print(f"{'batch':>5} {'int8 ms':>9} {'int4 ms':>9} {'int8 / int4':>12}")
    params = SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True)
    for size in batches:
        batch_prompts = prompts(backends["int8"], size)
        batches_by = {}
        for name, backend in backends.items():
            batch = backend.new_batch()
            batch.add_many([(key, prompt, params) for key, prompt in enumerate(batch_prompts)])
            batches_by[name] = batch
        times: dict[str, list[float]] = {name: [] for name in backends}
        for round_ in range(rounds + 1):
            order = list(backends) if round_ % 2 == 0 else list(reversed(backends))
            for name in order:
                started = time.perf_counter()
                for _ in range(steps):
                    batches_by[name].step()
                if round_ >= 1:
                    times[name].append((time.perf_counter() - started) / steps)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"{size:5d} {ms['int8']:9.2f} {ms['int4']:9.2f} {ms['int8'] / ms['int4']:11.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,8,32", help="rows (batch sizes), comma-separated")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per row count (default 15)")
    parser.add_argument("--steps", type=int, default=8, help="decode steps per round of the model (default 8)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not kernels.has_vnni():
        sys.exit("bench_int4: the 4-bit kernel needs an x86 CPU with AVX512-VNNI; this one runs int4 in Python")
    ops = kernels.ops()
    if ops is None:
        sys.exit("bench_int4: the fused kernels did not build here (see the message above)")
    rows = [int(x) for x in args.rows.split(",")]
    torch.set_num_threads(args.threads)
    layers_table(ops, rows, args.rounds)
    step_table(args.threads, rows, args.rounds, args.steps)


if __name__ == "__main__":
    main()
