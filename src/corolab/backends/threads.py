"""How many CPU threads the model's matrix work may use.

torch defaults to one thread per physical core. On a quiet machine that is fastest; on a shared one it can
be ruinous: OpenMP's threads spin while they wait for each other, so when another process holds one of the
cores, every parallel region of every model step waits for the slowest thread. Measured on a 2-core
machine with one busy competing process (``benchmarks/bench_threads.py``; figures in
``benchmarks/RESULTS.md``), see :data:`DEFAULT_SHARE` for the choice this leads to.
"""

from __future__ import annotations

import os

#: The default leaves this many cores to everything else on the machine (the event loop, the load tester,
#: a notebook, other users), but always uses at least one.
DEFAULT_SHARE = 0


def default_threads() -> int:
    """One thread per available core, minus :data:`DEFAULT_SHARE`, and at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - DEFAULT_SHARE)


def use_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``None``: :func:`default_threads`) and return the number set."""
    import torch

    n = threads or default_threads()
    torch.set_num_threads(n)
    return n
