"""The fused-kernel lever, measured: ``LlamaForward`` op by op from Python against the same pass through
``corolab/serving/backends/cpu/kernels.cpp``, on the embedded model in its default mode (int8, exact attention).

* speed: milliseconds per decode step of ``HFBatch`` at batch 1, 8 and 32, best of ``--rounds`` interleaved rounds
  (every variant sees the same machine), on ``--threads`` torch threads;
* the int8 matmul alone at one row: the kernels' VNNI path against ``torch._int_mm`` (oneDNN), per layer shape;
* quality: teacher-forced through decode steps (the serving path) on float32's own greedy replies to held-out
  prompts: the share of positions where each variant's top token is float32's, and the mean loss.

    python benchmarks/bench_kernels.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch

# The plain weight layout: "python" below is LlamaForward without the kernels, and a packed weight can only be
# multiplied by them (the packed layout against the plain one is bench_packed.py's measure).
os.environ["COROLAB_PACKED"] = "0"

from bench_quantize import PROMPTS, references, step_ms  # run from any folder: a script's own folder is on sys.path
from corolab.serving.backends.embedded import EmbeddedBackend
from corolab.serving.config import ModelConfig
from corolab.serving.backends.kvcache import empty_cache
from corolab.serving.backends.cpu.llama_forward import LlamaForward


def served_quality(lean, layers: int, refs) -> tuple[float, float]:
    """Teacher-forced through one prefill and then one decode step per token, as a reply is served."""
    agree = total = 0
    loss = 0.0
    with torch.inference_mode():
        for start, ids in refs:
            cache = empty_cache(layers)
            prompt = ids[:, :start]
            logits = lean(prompt, torch.ones_like(prompt), torch.arange(start)[None], cache)
            for at in range(start, ids.shape[1]):
                target = ids[0, at]
                loss += float(torch.nn.functional.cross_entropy(logits.float(), target[None]))
                agree += int(int(logits.argmax()) == int(target))
                total += 1
                logits = lean(ids[:, at:at + 1], torch.ones(1, at + 1, dtype=torch.long), torch.tensor([[at]]), cache)
    return agree / total, loss / total


def matmul_us(kernels, rows: int, inputs: int, outputs: int, repeat: int = 50) -> tuple[float, float]:
    """One int8 layer at ``rows`` rows: the kernels' whole layer call, and ``torch._int_mm`` alone."""
    from corolab.serving.backends.cpu.quantize import Int8Linear

    layer = Int8Linear(torch.nn.Linear(inputs, outputs, bias=False))
    x = torch.randn(rows, inputs)
    codes = torch.randint(-127, 128, (rows, inputs), dtype=torch.int8)
    calls = {"kernel": lambda: kernels.int8_linear(x, layer.weight_int8, layer.scale, layer.weight_sum),
             "int_mm": lambda: torch._int_mm(codes, layer.weight_int8.t())}
    best = {}
    for name, call in calls.items():
        for _ in range(5):
            call()
        times = []
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(repeat):
                call()
            times.append((time.perf_counter() - started) / repeat)
        best[name] = min(times) * 1e6
    return best["kernel"], best["int_mm"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32, help="reply tokens per prompt for the quality measure")
    args = parser.parse_args()

    # Loaded in a thread that ends, measured in another: the engine's own arrangement (a thread that loaded the
    # model would keep an OpenMP team alive; see corolab.serving.engine.common.load_in_passing_thread).
    backends: dict[str, EmbeddedBackend] = {}

    def load() -> None:
        backends["float32"] = EmbeddedBackend(ModelConfig(prefix_cache=False, quantize="none"))
        backends["int8"] = EmbeddedBackend(ModelConfig(prefix_cache=False))
        for backend in backends.values():
            backend.load()

    loader = threading.Thread(target=load)
    loader.start()
    loader.join()
    int8 = backends["int8"]
    kernels = int8.lean.kernels if int8.lean is not None else None
    if kernels is None:
        raise SystemExit("the fused kernels did not build here (see the message above): nothing to compare")
    variants = {"python": LlamaForward(int8.model, exact=True), "kernels": int8.lean}

    def measure() -> None:
        torch.set_num_threads(args.threads)
        print(f"torch threads: {args.threads}; CPU: {_cpu()}")
        print("\nms per decode step (best of interleaved rounds)")
        print(f"{'rows':>6}  {'python':>8}  {'kernels':>8}  speed-up")
        for rows in (1, 8, 32):
            best = {name: float("inf") for name in variants}
            for _ in range(args.rounds):
                for name, lean in variants.items():
                    int8.lean = lean
                    best[name] = min(best[name], step_ms(int8, rows))
            print(f"{rows:>6}  {best['python']:>8.1f}  {best['kernels']:>8.1f}  {best['python'] / best['kernels']:.2f}x",
                  flush=True)
        int8.lean = variants["kernels"]
        print("\none int8 layer (us): the kernels' whole call (norm-free) against torch._int_mm alone")
        for rows in (1, 4, 32):
            for inputs, outputs, what in ((576, 960, "q/k/v"), (576, 3072, "gate/up"), (1536, 576, "down"),
                                          (576, 49152, "LM head")):
                kernel, int_mm = matmul_us(kernels, rows, inputs, outputs)
                print(f"  {rows:>2} rows x {what:<8} {inputs}x{outputs:<6} kernel {kernel:8.1f}  _int_mm {int_mm:8.1f}"
                      f"  ({int_mm / kernel:.2f}x)", flush=True)
        refs = references(backends["float32"], args.tokens)
        layers = int8.model.config.num_hidden_layers
        print(f"\nquality, served path, {len(PROMPTS)} prompts x {args.tokens} tokens of float32's greedy replies")
        for name, lean in (("float32", backends["float32"].lean), *variants.items()):
            agree, loss = served_quality(lean, layers, refs)
            print(f"  {name:<8} top-1 agreement {agree:.3f}  mean loss {loss:.4f}", flush=True)

    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = [flag for flag in ("avx512_vnni", "amx_int8") if f" {flag}" in text]
    return f"{name} ({', '.join(flags) or 'no VNNI/AMX'})"


if __name__ == "__main__":
    main()
