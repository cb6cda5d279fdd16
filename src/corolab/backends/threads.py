"""How many CPU threads the model's matrix work may use.

torch defaults to one thread per physical core. On a quiet machine that is fastest; on a shared one it can
be ruinous: OpenMP's threads spin while they wait for each other, so when another process holds one of the
cores, every parallel region of every model step waits for the slowest thread.

Measured on a 2-core machine (``benchmarks/bench_threads.py``, figures in ``benchmarks/RESULTS.md``),
output tokens/s of the batched server, quiet / with one competing busy process:

- 2 threads (torch's default): c=1 13.3 / 3.4, c=8 55.8 / 0.2 (250 times slower when busy);
- 1 thread: c=1 14.8 / 15.9, c=8 44.7 / 53.1;
- 2 threads with ``OMP_WAIT_POLICY=PASSIVE``: c=1 10.5 / 16.0, c=8 33.1 / 41.1.

So the default leaves one core free (:data:`DEFAULT_SHARE`): it gives up a fifth of the quiet machine's
throughput at c=8 for a server that stays usable when anything else runs. On a machine that serves and
does nothing else, ``--threads`` with every core is faster.
"""

from __future__ import annotations

import os

#: The default leaves this many cores to everything else on the machine (the event loop, the load tester,
#: a notebook, other users), but always uses at least one.
DEFAULT_SHARE = 1


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
