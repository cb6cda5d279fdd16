"""Where a serving process's memory goes: resident memory after each stage of loading the embedded model as
``corolab serve`` loads it, and the model's tensors by kind.

Each ``--quantize`` choice runs in a fresh process (memory is the process's state), stage by stage:

1. Python alone; 2. ``import torch``; 3. transformers and the web stack (FastAPI, uvicorn, corolab's app);
4. the modules that loading a Llama model imports (in transformers 5 its modeling code pulls in accelerate,
``torch.distributed.tensor`` and sympy); 5. the backend loaded (tokenizer, model, the CPU speed path: quantized
layers, compacted embedding).

Then the bytes of the model's tensors: the blocks' layers, the LM head, the input embedding, the rest (norms).
What stage 5 adds beyond the tensors is the tokenizer, the rest of the loading code and the heap.
``bench_serving.py`` measures the peak while serving; this says what it is made of. Figures in RESULTS.md ("Where a serving process's memory goes").

    python benchmarks/bench_memory.py                       # auto (int8 on a CPU) and int4, about a minute
    python benchmarks/bench_memory.py --quantize none,int8,int4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def resident_mib() -> tuple[float, float]:
    """(resident now, peak so far) in MiB. psutil for the first, so it reads the same on Linux and macOS;
    ru_maxrss is KiB on Linux and bytes on macOS."""
    import psutil

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    return psutil.Process().memory_info().rss / 2**20, peak_mib


def child(quantize: str) -> None:
    def stage(name: str) -> None:
        now, peak = resident_mib()
        print(json.dumps({"stage": name, "rss": now, "peak": peak, "modules": len(sys.modules)}), flush=True)

    stage("python")
    import torch
    stage("import torch")
    import transformers  # noqa: F401
    import corolab.serving.server.app  # noqa: F401  (FastAPI, uvicorn's pieces, corolab's routes)
    stage("transformers, web stack")
    import transformers.models.llama.modeling_llama  # noqa: F401
    stage("+ modules a Llama load imports")  # accelerate, torch.distributed.tensor, sympy (transformers 5)
    from corolab.serving.backends import load_backend
    backend = load_backend(None, quantize=quantize)
    backend.load()
    stage("backend loaded")

    model = backend.model
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    kinds: dict[str, int] = {}
    seen: set[int] = set()
    for kind, module in (("layers", model.model.layers), ("LM head", head), ("input embedding", embedding),
                         ("rest", model)):
        for tensor in [*module.parameters(), *module.buffers()]:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                kinds[kind] = kinds.get(kind, 0) + storage.nbytes()
    print(json.dumps({"tensors": {k: v / 2**20 for k, v in kinds.items()},
                      "embedding": type(embedding).__name__, "torch": torch.__version__}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quantize", default="auto,int4", help="comma-separated --quantize choices")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    for quantize in args.quantize.split(","):
        run = subprocess.run([sys.executable, __file__, "--child", quantize], capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"--quantize {quantize} failed:\n{run.stderr[-2000:]}")
        lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        stages, summary = [line for line in lines if "stage" in line], lines[-1]
        print(f"\n--quantize {quantize} (torch {summary['torch']}; input embedding: {summary['embedding']})")
        print(f"  {'stage':28}{'resident MiB':>14}{'added':>9}{'peak MiB':>10}{'modules':>9}")
        before = 0.0
        for line in stages:
            print(f"  {line['stage']:28}{line['rss']:14.0f}{line['rss'] - before:+9.0f}{line['peak']:10.0f}"
                  f"{line['modules']:9d}")
            before = line["rss"]
        tensors = summary["tensors"]
        print("  the model's tensors, MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in tensors.items())
              + f"; total {sum(tensors.values()):.0f}")
        added = stages[-1]["rss"] - stages[-2]["rss"]
        runtime = added - sum(tensors.values())
        if runtime < 0:  # float weights stay views of the mapped checkpoint: resident only once read
            print(f"  loading added {added:.0f} MiB: the float tensors are views of the mapped checkpoint file, "
                  "resident as they are read, so their share is not separable here")
        else:
            print(f"  loading added {added:.0f} MiB: the tensors, and {runtime:.0f} MiB of tokenizer, the rest of "
                  "the loading code and heap")


if __name__ == "__main__":
    main()
