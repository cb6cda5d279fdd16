"""The coroutine load tester: closed and open loop load on OpenAI-compatible chat endpoints.

``result = await run_bench(BenchConfig(url=..., concurrency=[1, 8, 32]))`` in a notebook;
``run_bench_sync`` in a script; ``corolab bench`` in a shell. Metrics mean what vLLM's serving
benchmark means by them, so numbers can be compared side by side.
"""

from .config import BenchConfig, endpoint_url
from .dataset import DatasetError, Prompt, builtin_datasets, load_jsonl, synthetic_prompts
from .metrics import summarize
from .records import RequestRecord
from .runner import BenchResult, RunResult, run_bench, run_bench_sync, self_test

__all__ = [
    "BenchConfig", "BenchResult", "DatasetError", "Prompt", "RequestRecord", "RunResult", "builtin_datasets",
    "endpoint_url", "load_jsonl", "run_bench", "run_bench_sync", "self_test", "summarize", "synthetic_prompts",
]
