"""The compiled-step lever, first cut: ``torch.compile`` applied to ``LlamaForward`` as it is (dynamic shapes,
corolab's growable KV cache), against the same pass in eager mode, at batch 1 and 32 (int8, batched attention).

This is not the full lever (a static cache and fixed batch buckets, so one graph serves every step); it
measures what compiling buys without them. Dynamo breaks the graph at the cache update and recompiles as the
cache grows, until its recompile limit sends the rest back to eager.

    python benchmarks/bench_compile.py        # about 1 minute on 2 CPU cores
"""

from __future__ import annotations

import time
import warnings

import torch

from bench_quantize import step_ms  # the same step timing as the quantization ablation (run from any folder:
                                    # a script's own folder is on sys.path)
from corolab.serving.backends.embedded import EmbeddedBackend
from corolab.serving.config import ModelConfig
from corolab.serving.backends.cpu.llama_forward import LlamaForward


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    backend = EmbeddedBackend(ModelConfig(prefix_cache=False))
    backend.load()
    eager = LlamaForward(backend.model, exact=False)
    compiled = torch.compile(eager.__call__, dynamic=True)
    for rows in (1, 32):
        backend.lean = eager
        eager_ms = step_ms(backend, rows)
        backend.lean = compiled
        started = time.perf_counter()
        step_ms(backend, rows, steps=2)
        warm = time.perf_counter() - started
        compiled_ms = step_ms(backend, rows)
        print(f"batch {rows}: eager {eager_ms:.1f} ms, compiled {compiled_ms:.1f} ms per step "
              f"({eager_ms / compiled_ms:.2f}x); first steps, compiling included, {warm:.0f} s", flush=True)


if __name__ == "__main__":
    main()
