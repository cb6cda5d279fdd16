"""The decode-attention kernel against an earlier revision of itself: bit-identical, and how much faster.

Why: a change to ``kernels.cpp`` that is meant to be faster only (the same arithmetic in the same order) must
give the same numbers, and its speed-up is a ratio that a busy machine can flip. So both builds are loaded
into one process (the baseline's ops renamed to ``corolab_baseline``), fed the same inputs in the embedded
model's shape (9 query heads, 3 key/value heads, head size 64), compared bit for bit, then timed in
interleaved rounds; the best round of each is reported.

    python benchmarks/bench_attention.py --baseline HEAD~1 --batches 1,8,32,64,128 --context 130
    python benchmarks/bench_attention.py --baseline HEAD --layers 30 --tolerance 1e-5   # caches cold, new arithmetic
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "src/corolab/serving/backends/cpu/kernels.cpp"


def load_baseline(rev: str, folder: Path):  # -> torch.ops namespace
    from torch.utils import cpp_extension

    from corolab.serving.backends.cpu.kernels import _flags

    text = subprocess.run(["git", "show", f"{rev}:{SOURCE}"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout
    text = text.replace("TORCH_LIBRARY(corolab,", "TORCH_LIBRARY(corolab_baseline,")
    text = text.replace("TORCH_LIBRARY_IMPL(corolab,", "TORCH_LIBRARY_IMPL(corolab_baseline,")
    source = folder / "baseline_kernels.cpp"
    source.write_text(text)
    cpp_extension.load(name="corolab_baseline_kernels", sources=[str(source)], extra_cflags=_flags(),
                       extra_ldflags=["-fopenmp"], build_directory=str(folder), is_python_module=False)
    return torch.ops.corolab_baseline


def inputs(batch: int, context: int, seed: int = 0) -> tuple:
    heads, kv_heads, d = 9, 3, 64
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * d, generator=gen)
    angles = torch.rand(batch, d // 2, generator=gen) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    keys = torch.randn(batch, kv_heads, context + 8, d, generator=gen)
    values = torch.randn(batch, kv_heads, context + 8, d, generator=gen)
    lengths = torch.randint(max(1, context // 2), context + 1, (batch,), generator=gen)
    lengths[0] = context
    return qkv, cos, sin, keys, values, context - 1, lengths, heads, kv_heads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD~1", help="git revision whose kernels.cpp is the baseline")
    parser.add_argument("--batches", default="1,8,32,64,128")
    parser.add_argument("--context", type=int, default=130, help="keys per row (the bench's ~32+64 tokens)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--layers", type=int, default=1,
                        help="distinct caches called in turn, as a step's layers are (30 for the embedded model): "
                             "with 1 the same cache stays in the CPU's caches; with 30, at 128 rows, each call "
                             "reads its keys and values from memory")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tolerance", type=float, default=None,
                        help="for a change meant to alter the arithmetic: accept outputs within this absolute "
                             "difference (the cache writes must still be identical) and print the largest")
    args = parser.parse_args()

    from corolab.serving.backends.cpu.kernels import ops

    current = ops()
    if current is None:
        print("the kernels are not built here (no C++ compiler, or COROLAB_KERNELS=0)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline, Path(tmp))
    batches = [int(b) for b in args.batches.split(",")]
    largest = 0.0
    for batch in batches:  # the promise first: the same numbers and the same cache writes
        a, b = inputs(batch, args.context), inputs(batch, args.context)
        out_a, out_b = baseline.attend_decode(*a), current.attend_decode(*b)
        writes = torch.equal(a[3], b[3]) and torch.equal(a[4], b[4])
        gap = (out_a - out_b).abs().max().item()
        if not writes or gap > (args.tolerance or 0.0):
            print(f"batch {batch}: the outputs differ from {args.baseline}'s (largest difference {gap:.2e}, "
                  f"cache writes {'identical' if writes else 'different'})", file=sys.stderr)
            return 1
        largest = max(largest, gap)
    if largest:
        print(f"within {largest:.2e} of {args.baseline} at batches {args.batches} (context {args.context}); "
              "cache writes identical")
    else:
        print(f"bit-identical to {args.baseline} at batches {args.batches} (context {args.context})")
    print(f"ms per layer call, best of {args.rounds} interleaved rounds, {args.threads} threads")
    print(f"{'batch':>6} {'baseline':>10} {'current':>10} {'speed-up':>9}")
    for batch in batches:
        calls = [inputs(batch, args.context, seed=layer) for layer in range(args.layers)]
        best = {"baseline": float("inf"), "current": float("inf")}
        repeat = max(1, 256 // batch)
        for _ in range(args.rounds):
            for name, namespace in (("baseline", baseline), ("current", current)):
                namespace.attend_decode(*calls[-1])
                start = time.perf_counter()
                for index in range(repeat * len(calls)):
                    namespace.attend_decode(*calls[index % len(calls)])
                best[name] = min(best[name], (time.perf_counter() - start) / (repeat * len(calls)))
        print(f"{batch:>6} {best['baseline'] * 1e3:>10.3f} {best['current'] * 1e3:>10.3f} "
              f"{best['baseline'] / best['current']:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
