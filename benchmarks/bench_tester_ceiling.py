"""How fast can the load tester itself go? Short streamed completions (8 tokens, usage included) against
the instant fake server, concurrency 64:

1. raw asyncio client, server in this process (client and server share one core: a floor);
2. httpx client, server in this process (what the raw client buys);
3. raw asyncio client, server in a subprocess (the client has a core to itself: its real ceiling).

The last line is the headline: the raw client's ceiling in requests/s (target >= 1,000) and its ratio
to httpx.

    python benchmarks/bench_tester_ceiling.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from corolab.bench import BenchConfig, run_bench
from corolab.bench.fakeserver import FakeChatServer


def config(url: str, transport: str, requests: int, concurrency: int = 64) -> BenchConfig:
    return BenchConfig(url=url, concurrency=concurrency, requests=requests, max_tokens=8, prompt_tokens=8,
                       transport=transport, progress=False)


async def measure(url: str, transport: str, requests: int, concurrency: int = 64) -> float:
    await run_bench(config(url, transport, min(requests, 300), concurrency))  # warm-up: connections, imports
    result = await run_bench(config(url, transport, requests, concurrency))
    run = result.runs[0]
    s = run.summary
    assert s["completed"] == requests, s["errors"]
    assert s["output_tokens"] == 8 * requests, "token counts must agree with the server's usage"
    return s["request_throughput"]


async def in_process(transport: str, requests: int, concurrency: int = 64) -> float:
    async with FakeChatServer() as server:
        return await measure(server.url, transport, requests, concurrency)


def in_subprocess(requests: int) -> float:
    proc = subprocess.Popen([sys.executable, "-m", "corolab.bench.fakeserver", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # "fake chat server on http://127.0.0.1:PORT"
        url = line.rsplit(" ", 1)[-1].strip()
        return asyncio.run(measure(url, "raw", requests))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    raw = asyncio.run(in_process("raw", 5000))
    print(f"raw client,   server in-process: {raw:7.0f} req/s")
    hx8 = asyncio.run(in_process("httpx", 1000, concurrency=8))
    print(f"httpx client, server in-process: {hx8:7.0f} req/s at concurrency 8")
    hx = asyncio.run(in_process("httpx", 1000))
    print(f"httpx client, server in-process: {hx:7.0f} req/s")
    sub = in_subprocess(5000)
    print(f"raw client,   server subprocess: {sub:7.0f} req/s")
    print(f"tester ceiling: {max(raw, sub):.0f} req/s of short streamed completions "
          f"({raw / hx:.1f}x httpx at concurrency 64, {raw / hx8:.1f}x httpx's best at 8; target >= 1000)")


if __name__ == "__main__":
    main()
