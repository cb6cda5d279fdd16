"""The torchao path of the quantization lever: torchao's int8 configs, eager and under ``torch.compile``, against
corolab's eager ``Int8Linear`` and float32, on one linear layer of SmolLM2-135M's shape (576 -> 1536, the
gate/up width), at batch 1 and 32. Skipped with a message where torchao is not installed (it is not a
corolab dependency: ``pip install torchao`` to run this).

    python benchmarks/bench_torchao.py          # about 2 minutes on 2 CPU cores, most of it compiling
"""

from __future__ import annotations

import copy
import sys
import time
import warnings

import torch

from corolab.serving.backends.cpu.quantize import Int8Linear


def best_us(fn, x, rounds: int = 5, calls: int = 200) -> float:
    for _ in range(20):
        fn(x)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn(x)
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def main() -> None:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        print("bench_torchao: torchao is not installed here; skipped (pip install torchao to run it)")
        return
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = torch.nn.Linear(576, 1536, bias=False).eval()
    variants = {"float32": base, "corolab Int8Linear (eager)": Int8Linear(base)}
    for name, config in (("torchao int8 weight-only", Int8WeightOnlyConfig()),
                         ("torchao int8 dyn-act int8 weight", Int8DynamicActivationInt8WeightConfig())):
        model = copy.deepcopy(base)
        quantize_(model, config)
        variants[name + " (eager)"] = model
        variants[name + " + compile"] = torch.compile(copy.deepcopy(model), dynamic=False)
    variants["corolab Int8Linear + compile"] = torch.compile(Int8Linear(base), dynamic=False)
    print(f"torch {torch.__version__}, 1 thread; microseconds per call (best of 5 rounds)")
    print(f"{'variant':44}{'batch 1':>10}{'batch 32':>10}")
    results = {}
    for name, module in variants.items():
        with torch.inference_mode():
            results[name] = [best_us(module, torch.randn(rows, 576)) for rows in (1, 32)]
        print(f"{name:44}" + "".join(f"{us:10.1f}" for us in results[name]), flush=True)
    f32 = results["float32"]
    for name, (one, many) in results.items():
        print(f"{name:44} vs float32: {f32[0] / one:5.2f}x at 1, {f32[1] / many:5.2f}x at 32")


if __name__ == "__main__":
    sys.exit(main())
