"""The packed int8 weight layout against the plain one, on the embedded model, in one process.

Two copies of the model are loaded as ``corolab serve`` loads it (int8, fused kernels): one with its weights
packed for the kernels' VNNI matmul (``kernels.pack_int8``, the default where
``corolab.serving.backends.cpu.kernels.packed_layout()`` says so), one plain (``COROLAB_PACKED=0``: oneDNN's
``_int_mm`` above four rows, the small VNNI kernel up to four). For each batch size both get the same prompts,
prefilled the same way, then decode in interleaved rounds (plain, packed, packed, plain, ...) so that a busy
moment of the machine falls on both. Every step's greedy tokens must be the same for both copies (the layouts
give the same integer sums), or the script stops.

Printed: ms per decode step (median of the rounds' means), the ratio plain / packed, and the prefill of every
batch's prompts at once (the median of three, alternating which layout goes first; ms, and its ratio). Then
one ``int8_linear`` call on each of the model's weight shapes, plain / packed, at several row counts.

    python benchmarks/bench_packed.py                       # batches 1, 8, 32, 64, 128; a few minutes
    python benchmarks/bench_packed.py --batches 1,8 --rounds 9 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from profile_step import prompts  # noqa: E402  (30-40-token chat prompts, distinct per row)

from corolab.serving.backends import load_backend  # noqa: E402
from corolab.serving.backends.cpu.kernels import packed_layout  # noqa: E402
from corolab.serving.params import SamplingParams  # noqa: E402


def load(packed: bool):
    os.environ["COROLAB_PACKED"] = "1" if packed else "0"
    try:
        backend = load_backend(None)
        backend.load()
    finally:
        os.environ.pop("COROLAB_PACKED", None)
    return backend


SHAPES = {"q/k/v": (576, 960), "gate/up": (576, 3072), "down": (1536, 576), "o": (576, 576), "LM head": (576, 49152)}


def layer_table(kernels, rows_list: list[int], rounds: int = 7) -> None:
    """One int8 layer call (quantize, matmul, dequantize) on each of the model's weight shapes, plain weight
    against packed, best of interleaved rounds; the outputs compared bit for bit first."""
    from corolab.serving.backends.cpu.quantize import Int8Linear

    print("\none int8_linear call, plain / packed time (best of interleaved rounds; same outputs checked)")
    print(f"{'layer':>8} " + "".join(f"{'m=' + str(m):>9}" for m in rows_list), flush=True)
    torch.manual_seed(0)
    for name, (k, n) in SHAPES.items():
        plain = Int8Linear(torch.nn.Linear(k, n, bias=False))
        weights = {"plain": plain.weight_int8, "packed": kernels.pack_int8(plain.weight_int8)}
        cells = []
        for m in rows_list:
            if name == "LM head" and m > 128:  # the head reads the last position of each row only
                cells.append(f"{'':>9}")
                continue
            x = torch.randn(m, k)
            outs = {kind: kernels.int8_linear(x, w, plain.scale, plain.weight_sum) for kind, w in weights.items()}
            assert torch.equal(outs["plain"], outs["packed"]), (name, m)
            repeat = max(1, 20_000 // (m * (n // 256 + 1)))
            best = {kind: 1e9 for kind in weights}
            for r in range(rounds):
                for kind in (("plain", "packed") if r % 2 == 0 else ("packed", "plain")):
                    started = time.perf_counter()
                    for _ in range(repeat):
                        kernels.int8_linear(x, weights[kind], plain.scale, plain.weight_sum)
                    best[kind] = min(best[kind], (time.perf_counter() - started) / repeat)
            cells.append(f"{best['plain'] / best['packed']:8.2f}x")
        print(f"{name:>8} " + "".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32,64,128")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds per batch size (default 6)")
    parser.add_argument("--steps", type=int, default=6, help="decode steps per round (default 6)")
    parser.add_argument("--layer-rows", default="1,4,8,32,128,512,1024",
                        help="rows for the per-layer table (default 1,4,8,32,128,512,1024); empty: skip it")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: what loading set, every core but one; the batched engine "
                             "tunes its own while serving)")
    args = parser.parse_args()
    if not packed_layout():
        sys.exit("this CPU keeps the plain layout (no AVX512-VNNI, or AMX): nothing to compare")
    copies = {"plain": load(False), "packed": load(True)}
    if args.threads:
        torch.set_num_threads(args.threads)
    layouts = {name: next(m.weight_int8.dim() for m in b.model.modules() if hasattr(m, "weight_int8"))
               for name, b in copies.items()}
    assert layouts == {"plain": 2, "packed": 4}, layouts
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per decode step, median of "
          f"{args.rounds} interleaved rounds of {args.steps} steps; prefill: the batch's prompts at once", flush=True)
    print(f"{'batch':>5} {'plain':>9} {'packed':>9} {'speed-up':>9}   {'prefill plain':>13} {'packed':>9} "
          f"{'speed-up':>9}", flush=True)
    greedy = SamplingParams(max_tokens=2 + args.rounds * args.steps * 2, temperature=0.0, ignore_eos=True)
    for size in [int(x) for x in args.batches.split(",")]:
        batches, prefill = {}, {"plain": [], "packed": []}
        for r in range(3):  # three fresh prefills each, alternating which goes first; the median counts
            for name in ("plain", "packed") if r % 2 == 0 else ("packed", "plain"):
                backend = copies[name]
                items = [(key, p, greedy) for key, p in enumerate(prompts(backend, size))]
                batches.pop(name, None)  # the previous batch's cache is freed before the next is built
                batch = backend.new_batch()
                started = time.perf_counter()
                first = batch.add_many(items)
                prefill[name].append(time.perf_counter() - started)
                batches[name] = (batch, first)
        prefill = {name: statistics.median(seconds) for name, seconds in prefill.items()}
        assert batches["plain"][1] == batches["packed"][1], "the first tokens differ between the layouts"
        times: dict[str, list[float]] = {"plain": [], "packed": []}
        for r in range(args.rounds):
            order = ("plain", "packed") if r % 2 == 0 else ("packed", "plain")
            tokens = {}
            for name in order:
                batch = batches[name][0]
                started = time.perf_counter()
                tokens[name] = [batch.step() for _ in range(args.steps)]
                times[name].append((time.perf_counter() - started) / args.steps)
            assert tokens["plain"] == tokens["packed"], f"batch {size}: the layouts' greedy tokens differ"
        plain, packed = (statistics.median(times[n]) * 1e3 for n in ("plain", "packed"))
        print(f"{size:5d} {plain:9.1f} {packed:9.1f} {plain / packed:8.2f}x   {prefill['plain'] * 1e3:13.0f} "
              f"{prefill['packed'] * 1e3:9.0f} {prefill['plain'] / prefill['packed']:8.2f}x", flush=True)
    if args.layer_rows:
        layer_table(copies["packed"].lean.kernels, [int(x) for x in args.layer_rows.split(",")])


if __name__ == "__main__":
    main()
