"""How many torch threads should `corolab serve` use? Measured on a quiet machine and on a busy one.

One run: four servers on the embedded model, started once and kept (`--threads 1`, `--threads N` with
N = all cores, `--threads N` with `OMP_WAIT_POLICY=PASSIVE`, which makes OpenMP's idle threads sleep
instead of spin, and the default, which picks between N-1 and N threads from what its steps get:
`corolab.serving.backends.cpu.torch_threads.ThreadTuner`). For each condition, quiet (nothing else running) and busy (one
competing process that spins on a core, as a second user or a notebook would), every server serves the same
closed-loop load at each concurrency, interleaved: each round measures every server at one level before the
next. The best round counts. It prints output tokens/s per server, condition and level, then the ratios to
`--threads 1`. The last line is the headline: the slowdown of each variant from quiet to busy.

    python benchmarks/bench_threads.py                    # about 5 minutes on 2 CPU cores
    python benchmarks/bench_threads.py --rounds 1 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys

from corolab.teach.background import BackgroundServer
from corolab.bench import BenchConfig, run_bench

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def competitor(busy: bool):
    """One process that spins on a core for as long as the block lasts (busy), or nothing (quiet)."""
    if not busy:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def start(name: str, threads: int | None, passive: bool) -> BackgroundServer:
    env_before = os.environ.get("OMP_WAIT_POLICY")
    if passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read by OpenMP when the server's torch starts
    try:
        args = [] if threads is None else ["--threads", str(threads)]  # None: the default, measured while serving
        server = BackgroundServer(model=None, engine="batched", args=args).start()
    finally:
        if env_before is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = env_before
    server.wait_ready()
    return server


async def measure(url: str, concurrency: int, requests: int, tokens: int) -> float:
    config = BenchConfig(url=url, model="SmolLM2-135M-Instruct", concurrency=[concurrency], requests=requests,
                         max_tokens=tokens, prompt_tokens=16, progress=False)
    result = await run_bench(config)
    return result.runs[0].summary["output_throughput"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    variants = {"threads=1": (1, False), f"threads={CORES}": (CORES, False),
                f"threads={CORES} passive": (CORES, True), "default (tuned)": (None, False)}
    servers = {name: start(name, *v) for name, v in variants.items()}
    best: dict[tuple[str, str, int], float] = {}
    try:
        for condition in ("quiet", "busy"):
            with competitor(condition == "busy"):
                for round_ in range(args.rounds):
                    for level in levels:
                        for name, server in servers.items():
                            rate = await measure(server.url, level, max(2, 2 * level), args.tokens)
                            key = (name, condition, level)
                            best[key] = max(best.get(key, 0.0), rate)
                            print(f"round {round_ + 1} {condition:5} c={level:<2} {name:18} {rate:7.1f} tok/s",
                                  flush=True)
    finally:
        for server in servers.values():
            server.stop()
    print(f"\noutput tokens/s, best of {args.rounds} interleaved rounds ({CORES} cores; busy = one spinning process)")
    print(f"{'server':20}" + "".join(f"{c + ' c=' + str(level):>14}" for c in ("quiet", "busy") for level in levels))
    for name in variants:
        print(f"{name:20}" + "".join(f"{best[(name, c, level)]:14.1f}" for c in ("quiet", "busy") for level in levels))
    base = "threads=1"
    for name in variants:
        if name != base:
            ratios = ", ".join(f"{c} c={level}: {best[(name, c, level)] / best[(base, c, level)]:.2f}x"
                               for c in ("quiet", "busy") for level in levels)
            print(f"{name} / {base}: {ratios}")
    top = levels[-1]
    slowdowns = ", ".join(f"{name} {best[(name, 'quiet', top)] / best[(name, 'busy', top)]:.2f}x" for name in variants)
    print(f"headline: quiet / busy tokens/s at c={top} (higher = hurt more by a busy machine): {slowdowns}")


if __name__ == "__main__":
    asyncio.run(main())
