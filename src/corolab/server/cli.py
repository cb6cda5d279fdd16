"""``corolab serve``: the OpenAI-compatible server on one model and one engine."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the OpenAI-compatible chat server",
                              description="Serve a chat model over an OpenAI-compatible API, SSE and websockets.")
    p.add_argument("--model", default=None,
                   help="'fake', a Hugging Face id or local path; default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--engine", choices=("naive", "threads", "batched"), default="batched")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("COROLAB_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $COROLAB_API_KEY, else no key)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="prefill every prompt in full (default: reuse the keys/values of the opening prompts share)")
    p.add_argument("--max-waiting", type=int, default=256, help="queued requests before answering 429")
    p.add_argument("--max-tokens", type=int, default=256, help="reply length when a request sets none")
    p.add_argument("--served-model-name", action="append", default=None,
                   help="name clients use for the model (repeat for several); default: the model id and gpt-3.5-turbo")
    p.add_argument("--fake-step-delay", type=float, default=0.0,
                   help="with --model fake: seconds per decode step, to imitate a real model")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--exit-with-parent", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _watch_parent(pid: int) -> None:
    """Exit when the process that started us is gone: a notebook kernel killed with -9 leaves no orphans."""
    def watch() -> None:
        while True:
            if os.getppid() != pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="corolab-parent-watch", daemon=True).start()


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from corolab.backends import load_backend
    from corolab.engine import create_engine
    from corolab.server.app import create_app

    if args.exit_with_parent:
        _watch_parent(args.exit_with_parent)
    try:
        backend = load_backend(args.model, device=args.device, dtype=args.dtype, prefix_cache=args.prefix_cache)
        if args.model == "fake" and args.fake_step_delay:
            backend.step_delay = args.fake_step_delay  # type: ignore[attr-defined]
        engine = create_engine(args.engine, backend, max_batch_size=args.max_batch_size,
                               max_waiting=args.max_waiting)
    except (ValueError, OSError, ImportError) as exc:  # a bad option or model path: one line, no traceback
        print(f"corolab serve: {exc}", file=sys.stderr)
        return 2
    failed: list[BaseException] = []
    config = uvicorn.Config(None, host=args.host, port=args.port, log_level=args.log_level)  # type: ignore[arg-type]
    server = uvicorn.Server(config)

    def on_load_failure(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    config.app = create_app(engine, api_key=args.api_key, served_model_name=args.served_model_name,
                            default_max_tokens=args.max_tokens, on_load_failure=on_load_failure)
    print(f"corolab: serving on http://{args.host}:{args.port} (engine {args.engine}); the model loads in the "
          "background, /health turns 200 when it is ready", file=sys.stderr, flush=True)
    server.run()
    return 1 if failed else 0
