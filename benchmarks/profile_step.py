"""Where a decode step's time goes, on the embedded model loaded as `corolab serve` loads it (int8, fused kernels).

For each batch size it fills a batch the way the batched engine does (the ``Scheduler`` plans, the batch
prefills distinct chat prompts), then runs decode steps the way the engine's worker does: ``scheduler.plan()``,
``batch.step()`` (which runs the model's forward and samples), and each row's ``RequestSequence.push`` (the
streaming detokenizer, the stop filter, the deltas). Two measurements per batch size:

1. Timers, no profiler (the figures to trust for ms): per step, the scheduler's plan, the model's forward,
   sampling, the rest of ``batch.step`` (ids, mask, positions, cache growth: bookkeeping), and detokenizing.
2. ``torch.profiler`` over the same kind of steps, for the split inside the forward: self CPU time of each
   operator, bucketed into the int8 linear layers (``corolab::int8_linear``, and ``corolab::decode_layers``'s own
   time: it runs a decode step's layers in one call), attention
   (``corolab::attend_decode``: rotary embedding, the KV-cache write and attention, row by row), and the rest of
   the torch ops (embedding, SiLU x up, rotary tables, mask sums); the forward's wall time not spent inside any
   operator is Python between the calls. These shares scale the timed forward.

RMSNorm has no operator of its own on this path: it runs inside the int8 call that follows it. Its cost is
measured separately by calling the fused q/k/v layer on a batch with the norm and on the same batch already
normed without it (the difference, times the norms per step).

The engine's own work outside these (the worker's lock, handing deltas to the event loop) and the server's
(SSE framing, the sockets) run on the event loop's thread beside the step; they are not in these figures
(``bench_serving.py`` reports the event loop's CPU share).

    python benchmarks/profile_step.py                        # batch sizes 1, 8, 32, 64; about 2 minutes
    python benchmarks/profile_step.py --batches 1,8,32,64,128
    python benchmarks/profile_step.py --batches 1,8 --steps 20 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

import corolab.serving.backends.hf_batch as hf_batch
from corolab.serving.backends import load_backend
from corolab.serving.backends.base import PrefillChunk
from corolab.serving.engine.scheduler import Entry, Scheduler
from corolab.serving.engine.sequence import RequestSequence
from corolab.serving.params import SamplingParams

TOPICS = ["rivers", "bread", "chess", "volcanoes", "jazz", "bees", "glaciers", "trains", "tea", "owls", "maps",
          "clocks", "bridges", "coral", "kites", "salt", "comets", "violins", "deserts", "ink", "wolves", "paper",
          "tides", "glass", "bicycles", "moss", "lighthouses", "honey", "caves", "sails", "frost", "spices"]


def prompts(backend, n: int) -> list[list[int]]:
    """``n`` distinct chat prompts of 30-40 tokens (the bench's prompt length is 32)."""
    out = []
    for i in range(n):
        a, b = TOPICS[i % len(TOPICS)], TOPICS[(i * 7 + 3) % len(TOPICS)]
        text = f"Write a short story number {i} about {a} and {b}, with a twist at the end and a happy ending."
        out.append(backend.encode_chat([{"role": "user", "content": text}]))
    return out


class Timed:
    """Wrap a callable; add its wall time to ``self.seconds``."""

    def __init__(self, fn) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def fill(backend, batch_size: int, max_tokens: int):
    """A batch of ``batch_size`` rows, prefilled through the scheduler as the engine does; returns
    ``(scheduler, batch, sequences)``."""
    scheduler = Scheduler(max_batch_size=batch_size, max_waiting=batch_size)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    seqs = {}
    for key, prompt in enumerate(prompts(backend, batch_size)):
        seqs[key] = RequestSequence(backend, len(prompt), params)
        scheduler.add(Entry(key, len(prompt), (prompt, params)))
    batch = backend.new_batch()
    while scheduler.waiting or scheduler.prefilling:
        plan = scheduler.plan()
        chunks = [PrefillChunk(c.entry.key, c.entry.payload[0], c.start, c.end, c.entry.payload[1])
                  for c in plan.prefill]
        for key, token in batch.prefill(chunks).items():
            seqs[key].push(token)
    return scheduler, batch, seqs


def decode_steps(scheduler, batch, seqs, steps: int, forward: Timed, sampler: Timed) -> dict[str, list[float]]:
    """``steps`` decode steps as the engine's worker runs them; per step, ms in each phase."""
    phases = defaultdict(list)
    for _ in range(steps):
        forward.seconds = sampler.seconds = 0.0
        t0 = time.perf_counter()
        plan = scheduler.plan()
        t1 = time.perf_counter()
        tokens = batch.step()
        t2 = time.perf_counter()
        for entry in plan.decode:
            seqs[entry.key].push(tokens[entry.key])
        t3 = time.perf_counter()
        phases["plan"].append((t1 - t0) * 1e3)
        phases["forward"].append(forward.seconds * 1e3)
        phases["sampling"].append(sampler.seconds * 1e3)
        phases["bookkeeping"].append((t2 - t1 - forward.seconds - sampler.seconds) * 1e3)
        phases["detokenizing"].append((t3 - t2) * 1e3)
        phases["step"].append((t3 - t0) * 1e3)
    return phases


def bucket(name: str) -> str:
    # int8_linear quantizes the activations and, from a few rows up, hands the integer product to aten::_int_mm.
    # decode_layers (a decode step's layers in one call) calls int8_linear directly, so its own time is theirs;
    # its attention has a profiler scope of its own, and SiLU x up are aten ops under it.
    if name in ("corolab::int8_linear", "corolab::decode_layers") or name in ("aten::linear", "aten::addmm",
                                                                               "aten::mm", "aten::_int_mm"):
        return "matmul"
    if name == "corolab::attend_decode" or "scaled_dot_product" in name or "attention" in name:
        return "attention"
    return "elementwise"


def forward_split(scheduler, batch, seqs, steps: int, backend) -> dict[str, float]:
    """Shares of the forward's wall time (under the profiler): per operator bucket, and Python between them."""
    inner = backend.forward

    def forward(*args):
        with torch.profiler.record_function("## forward ##"):
            return inner(*args)

    backend.forward = forward
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                plan = scheduler.plan()
                tokens = batch.step()
                for entry in plan.decode:
                    seqs[entry.key].push(tokens[entry.key])
    finally:
        del backend.forward  # the instance attribute; the class's method again
    events = prof.events()
    frames = [e for e in events if e.name == "## forward ##"]
    total = sum(e.time_range.elapsed_us() for e in frames)
    spans = [(e.time_range.start, e.time_range.end) for e in frames]
    out: dict[str, float] = defaultdict(float)
    per_op: dict[str, float] = defaultdict(float)
    # operators run on the calling thread, inside a forward frame; self time so nested calls count once
    for e in events:
        if e.name.startswith("##") or not e.name.startswith(("aten::", "corolab::")):
            continue
        start = e.time_range.start
        if not any(a <= start <= b for a, b in spans):
            continue
        out[bucket(e.name)] += e.self_cpu_time_total
        per_op[e.name] += e.self_cpu_time_total
    out["python in forward"] = max(total - sum(out.values()), 0.0)
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:8]
    print(f"batch {len(batch)}: operators in the forward (self time, share of the profiled forward): "
          + ", ".join(f"{name} {100 * us / total:.1f} %" for name, us in top), flush=True)
    return {k: v / total for k, v in out.items()}


def norm_ms(backend, batch_size: int, repeats: int = 20, rounds: int = 30) -> float:
    """ms per step of the RMSNorms: the fused q/k/v call with its norm minus the same call on an input already
    normed (times the norms per step: two per layer and the final one)."""
    ops = torch.ops.corolab
    model = backend.model
    layer = model.model.layers[0]
    lin = layer.self_attn.q_proj.group[0].linear
    weights = (lin.weight_int8, lin.scale, lin.weight_sum, lin.bias)
    norm = layer.input_layernorm.weight
    eps = model.config.rms_norm_eps
    h = torch.randn(batch_size, 1, model.config.hidden_size)
    normed = F.rms_norm(h, (h.shape[-1],), norm, eps)

    def run(fn) -> float:
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t) / repeats

    # alternating short rounds, the best of each: a burst of someone else's load hits both alike or neither
    fused, bare = float("inf"), float("inf")
    with torch.inference_mode():
        for _ in range(rounds):
            fused = min(fused, run(lambda: ops.int8_linear(h, *weights, None, norm, eps)))
            bare = min(bare, run(lambda: ops.int8_linear(normed, *weights, None, None, 0.0)))
    per_step = 2 * model.config.num_hidden_layers + 1
    return max(fused - bare, 0.0) * per_step * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32,64", help="batch sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=40, help="timed decode steps per batch size")
    parser.add_argument("--profiled-steps", type=int, default=15, help="decode steps under torch.profiler")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: every core this process may use; the server tunes its own)")
    args = parser.parse_args()
    import os

    threads = args.threads or len(os.sched_getaffinity(0))
    backend = load_backend(None, threads=threads)  # the server's defaults otherwise: int8, fused kernels, exact
    backend.load()
    torch.set_num_threads(threads)
    kernels = backend.lean is not None and backend.lean.kernels is not None
    print(f"embedded model, quantization {backend.quantization}, fused kernels {'on' if kernels else 'off'}, "
          f"torch {torch.__version__}, {threads} threads", flush=True)
    forward = Timed(backend.forward)
    backend.forward = forward
    sampler = Timed(hf_batch.sample)
    hf_batch.sample = sampler
    warm = 8
    rows = []
    for size in [int(b) for b in args.batches.split(",")]:
        budget = warm + args.steps + args.profiled_steps + 8
        scheduler, batch, seqs = fill(backend, size, budget)
        decode_steps(scheduler, batch, seqs, warm, forward, sampler)  # unmeasured: buffers grown, threads up
        phases = decode_steps(scheduler, batch, seqs, args.steps, forward, sampler)
        backend.forward = forward.fn
        split = forward_split(scheduler, batch, seqs, args.profiled_steps, backend)
        backend.forward = forward
        norms = norm_ms(backend, size) if kernels else float("nan")
        med = {k: statistics.median(v) for k, v in phases.items()}
        step = sum(med[k] for k in ("plan", "forward", "sampling", "bookkeeping", "detokenizing"))
        fwd = med["forward"]
        row = {"batch": size, "step": step, "best": min(phases["step"]),
               "matmul": fwd * split.get("matmul", 0.0) - norms, "norms": norms,
               "attention": fwd * split.get("attention", 0.0),
               "elementwise": fwd * split.get("elementwise", 0.0),
               "python in forward": fwd * split.get("python in forward", 0.0),
               "bookkeeping": med["bookkeeping"], "sampling": med["sampling"],
               "detokenizing": med["detokenizing"], "plan": med["plan"]}
        rows.append(row)
        print(f"batch {size:3d}: step {step:6.1f} ms (best {row['best']:.1f}), {size / step * 1e3:6.0f} tok/s, "
              f"context ~{batch._mask.shape[1]} columns", flush=True)
        del scheduler, batch, seqs
    cols = ["matmul", "attention", "norms", "elementwise", "python in forward", "bookkeeping", "sampling",
            "detokenizing", "plan"]
    heads = ["int8 matmuls", "attention", "norms", "other torch ops", "Python in forward", "batch bookkeeping",
             "sampling", "detokenizing", "scheduler"]
    print("\nms per decode step (share of the step); medians of the timed steps, the forward split by the profile")
    print("| batch | step ms | tok/s | " + " | ".join(heads) + " |")
    print("| ---: | ---: | ---: | " + " | ".join("---:" for _ in heads) + " |")
    for r in rows:
        cells = " | ".join(f"{r[c]:.2f} ({100 * r[c] / r['step']:.0f} %)" for c in cols)
        print(f"| {r['batch']} | {r['step']:.1f} | {r['batch'] / r['step'] * 1e3:.0f} | {cells} |")


if __name__ == "__main__":
    main()
