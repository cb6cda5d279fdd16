"""``corolab bench``: load-test any OpenAI-compatible chat endpoint (or corolab's websocket) from a shell."""

from __future__ import annotations

import argparse
import sys


# Without --requests or --duration each load level runs this long: a three-level sweep on the real model
# takes about a minute, and the progress bar counts the seconds down. (A fixed request count would take
# minutes at one user on a CPU: 100 requests of 32 tokens one after the other.)
DEFAULT_DURATION = 20.0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="load-test an OpenAI-compatible chat endpoint",
        description="Closed loop (--concurrency) or open loop (--rate, Poisson arrivals); comma lists sweep.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="base URL or full endpoint")
    p.add_argument("--model", default="fake")
    p.add_argument("--mode", choices=("stream", "nonstream", "ws"), default="stream")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_ints, help="e.g. 1,8,32 (closed loop)")
    load.add_argument("--rate", type=_floats, help="requests/s, e.g. 2,4 (open loop)")
    p.add_argument("--max-concurrency", type=int, default=256, help="cap on in-flight requests with --rate")
    p.add_argument("--requests", type=int, default=None,
                   help=f"requests per run (default: none, each run lasts {DEFAULT_DURATION:g} s)")
    p.add_argument("--duration", type=float, default=None,
                   help=f"seconds per run (default {DEFAULT_DURATION:g} when --requests is not given either)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--dataset", metavar="PATH|builtin:chats",
                   help="prompts from a JSONL file (prompt/query/messages, + max_tokens, per line), or "
                        "builtin:chats: 175 real-looking chats shipped with corolab, long-tailed prompt and "
                        "reply lengths (add --ignore-eos for replies of exactly those lengths)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true", help="ask for exactly max_tokens (vLLM extension)")
    p.add_argument("--ttft-limit", type=float, help="goodput TTFT limit, milliseconds")
    p.add_argument("--tpot-limit", type=float, help="goodput TPOT limit, milliseconds")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    p.add_argument("--api-key", help="bearer token (default: $OPENAI_API_KEY)")
    p.add_argument("--transport", choices=("raw", "httpx"), default="raw")
    p.add_argument("--json", dest="json_path", help="write results (with per-request records) as JSON")
    p.add_argument("--csv", dest="csv_path", help="write one row per request as CSV")
    p.add_argument("--plot", dest="plot_path", help="write latency CDFs (and sweep plots) as an image")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--self-test", action="store_true",
                   help="measure the tester's own ceiling against an in-process instant server")
    p.add_argument("--locust-workers", type=int, metavar="N",
                   help="run as a Locust master and N worker processes on 127.0.0.1 (one --concurrency, "
                        "shared by the workers); needs pip install 'corolab[locust]'")
    p.set_defaults(func=run)
    return p


def config_from_args(args):
    from .config import BenchConfig

    requests, duration = args.requests, args.duration
    if requests is None and duration is None:
        duration = DEFAULT_DURATION
    return BenchConfig(
        url=args.url, model=args.model, mode=args.mode, concurrency=args.concurrency, rate=args.rate,
        max_concurrency=args.max_concurrency, requests=requests, duration=duration,
        prompt_tokens=args.prompt_tokens, max_tokens=args.max_tokens, dataset=args.dataset, seed=args.seed,
        ignore_eos=args.ignore_eos,
        ttft_limit=None if args.ttft_limit is None else args.ttft_limit / 1e3,
        tpot_limit=None if args.tpot_limit is None else args.tpot_limit / 1e3,
        timeout=args.timeout, api_key=args.api_key, transport=args.transport, progress=not args.no_progress,
    )


def run(args) -> int:
    import asyncio

    from .runner import run_bench_sync, self_test

    config = config_from_args(args)
    if args.locust_workers is not None:
        result = _run_locust(config, args)
        if result is None:
            return 2
    elif args.self_test:
        if args.concurrency is None and args.rate is None:
            config.concurrency = 64
        if args.requests is None and args.duration is None:
            config.requests, config.duration = 4000, None
        result = asyncio.run(self_test(config))
    else:
        from .dataset import DatasetError

        try:
            result = run_bench_sync(config)
        except DatasetError as exc:
            print(f"corolab bench: {exc}", file=sys.stderr)
            return 2
    if args.locust_workers is None:  # the Locust master has printed the report already
        print(result.table())
    if args.json_path:
        if args.locust_workers is None:  # the Locust master wrote it
            result.to_json(args.json_path)
        print(f"wrote {args.json_path}")
    if args.csv_path:
        result.to_csv(args.csv_path)
        print(f"wrote {args.csv_path}")
    if args.plot_path:
        from .plots import save

        for path in save(result, args.plot_path):
            print(f"wrote {path}")
    if result.interrupted:
        print("interrupted: the numbers above cover only what finished", file=sys.stderr)
        return 130
    return 0 if all(r.summary["completed"] for r in result.runs) else 1


def _run_locust(config, args):
    """``--locust-workers N``: the same run, spread over Locust worker processes; None after an error
    that stopped it before it began (printed)."""
    from .dataset import DatasetError, prompts_for
    from .locust_launch import LocustError, run_locust

    try:
        prompts_for(config)  # a bad dataset is one clear error here, not one per worker
        return run_locust(config, args.locust_workers, json_path=args.json_path)
    except (DatasetError, LocustError, ValueError) as exc:
        print(f"corolab bench: {exc}", file=sys.stderr)
        return None
