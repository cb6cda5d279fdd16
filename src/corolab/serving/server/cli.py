"""``corolab serve``: the OpenAI-compatible server on one model and one engine.

Every option's default is :class:`~corolab.serving.config.ServeConfig`'s, and every option's choices are its
``Literal`` type's (:mod:`corolab.serving.choices`), so the command, ``create_engine`` and ``create_app``
cannot disagree about one.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import fields

from corolab.serving.choices import Attention, Device, Dtype, EngineKind, KvCacheDtype, LogLevel, Quantize, choices
from corolab.serving.config import ServeConfig, read_api_key
from corolab.serving.server.redact import RedactKeys  # noqa: F401  (here too: the book and tests import it from the CLI)

_DEFAULTS = ServeConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    d = _DEFAULTS
    p = subparsers.add_parser("serve", help="run the OpenAI-compatible chat server",
                              description="Serve a chat model over an OpenAI-compatible API, SSE and websockets.")
    p.add_argument("--model", default=d.model,
                   help="'fake' (or 'fake:SECONDS' per step), a Hugging Face id or local path; "
                        "default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--engine", choices=choices(EngineKind), default=d.engine)
    p.add_argument("--device", default=d.device, choices=choices(Device))
    p.add_argument("--dtype", default=d.dtype, choices=choices(Dtype))
    p.add_argument("--quantize", default=d.quantize, choices=choices(Quantize),
                   help="int8: int8 weights and per-token int8 activations, 3-5x faster on a CPU, the same reply "
                        "alone or in a batch; int4: 4-bit weights in the layers (the LM head int8), fewer bytes a "
                        "step, so faster at one or a few streams on a CPU with AVX512-VNNI, at a cost in quality; "
                        "none: the model's float weights (default auto: int8 on a CPU)")
    p.add_argument("--attention", default=d.attention, choices=choices(Attention),
                   help="exact: attention row by row, so a greedy reply is the same alone or in any batch; "
                        "batched: one call for the batch, and a reply may change with the requests that share its "
                        "steps. With the fused int8 kernels (a CPU with a C++ compiler) decoding is always row by "
                        "row and batched changes only prefill (default exact)")
    p.add_argument("--kv-cache-dtype", default=d.kv_cache_dtype, choices=choices(KvCacheDtype),
                   help="what the KV cache stores: float16 halves a float32 model's cache, so twice the tokens fit "
                        "in --kv-cache-gib, at one rounding of each key and value (greedy replies change, still the "
                        "same alone or in any batch; benchmarks/RESULTS.md); auto: the model's dtype (default auto)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="CPU threads for model work (default: the batched engine watches its CPU time and uses every "
                        "core, or every core but one while another process wants one; other engines every core "
                        "but one; see the README's 'Threads')")
    p.add_argument("--host", default=d.host, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $COROLAB_API_KEY, else no key); "
                        "prefer --api-key-file or the variable: a key on the command line shows in 'ps'")
    p.add_argument("--api-key-file", default=None, help="read the API key from the first line of this file")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help="requests decoding together (default %(default)s; fewer join while their KV cache would "
                        "pass --kv-cache-gib)")
    p.add_argument("--kv-cache-gib", type=float, default=d.kv_cache_gib,
                   help="GiB the batch's KV cache may take, counting each request at its prompt plus its reply "
                        "limit: a request waits while it would not fit, and one that could never fit gets a 400 "
                        "(default %(default)s; vLLM's CPU build calls its budget VLLM_CPU_KVCACHE_SPACE)")
    p.add_argument("--max-waiting", type=int, default=d.max_waiting, help="queued requests before answering 429")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="reply length when a request sets none")
    p.add_argument("--prefill-budget", type=int, default=d.prefill_budget,
                   help="prompt tokens prefilled per engine step; a longer prompt is prefilled in chunks")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help="largest request body (413 above it) or websocket frame (close 1009 above it)")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout,
                   help="seconds a client has to send a request's headers before its connection is closed")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout,
                   help="seconds a client has to send a request's whole body once its headers are in (then 408)")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout,
                   help="on SIGTERM or Ctrl-C, seconds running replies may go on before each is ended with an error "
                        "event; new requests get 503 meanwhile (default %(default)s; a second signal ends them now)")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="prefill every prompt in full (default: reuse the keys/values of the opening prompts share)")
    p.add_argument("--served-model-name", dest="served_model_names", action="append", default=None,
                   help="name clients use for the model (repeat for several); default: the model id and gpt-3.5-turbo")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=None, metavar="ORIGIN",
                   help="let scripts on pages from ORIGIN (scheme://host[:port], or *) call the API: CORS headers "
                        "for that origin (repeat for several); default: none, so only the page at / and non-browser "
                        "clients can")
    p.add_argument("--log-level", default=d.log_level, choices=choices(LogLevel))
    p.add_argument("--exit-with-parent", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def config_from(args: argparse.Namespace) -> ServeConfig:
    """The :class:`ServeConfig` an argument list describes (raises ValueError for impossible values)."""
    values = {f.name: getattr(args, f.name) for f in fields(ServeConfig) if hasattr(args, f.name)}
    values["served_model_names"] = values.get("served_model_names") or []
    values["cors_origins"] = values.get("cors_origins") or []
    values["api_key"] = read_api_key(args.api_key, args.api_key_file)
    return ServeConfig(**values).validate()


def _watch_parent(pid: int) -> None:
    """Exit when the process that started us is gone: a notebook kernel killed with -9 leaves no orphans."""
    def watch() -> None:
        while True:
            if os.getppid() != pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="corolab-parent-watch", daemon=True).start()


def run(args: argparse.Namespace) -> int:
    from corolab.serving.backends import load_backend
    from corolab.serving.engine import create_engine
    from corolab.serving.server.app import create_app
    from corolab.serving.server.uvicorn_setup import DrainingServer, uvicorn_config

    if args.exit_with_parent:
        _watch_parent(args.exit_with_parent)
    try:
        config = config_from(args)
        backend = load_backend(config.model_config())
        check = getattr(backend, "check", None)
        if check is not None:
            check()  # a missing device or model: one line now, not a traceback from the background later
        engine = create_engine(None, backend, config)
    except (ValueError, OSError, ImportError, RuntimeError) as exc:  # a bad option or model: one line
        print(f"corolab serve: {exc}", file=sys.stderr)
        return 2
    failed: list[BaseException] = []

    def on_load_failure(exc: BaseException) -> None:
        failed.append(exc)
        server.should_exit = True

    app = create_app(engine, config, on_load_failure=on_load_failure)
    server = DrainingServer(uvicorn_config(app, config), app.state.corolab.drain)  # SIGTERM: drain, then stop
    print(f"corolab: serving on http://{config.host}:{config.port} (engine {engine.info.engine}); the model loads "
          "in the background, /health turns 200 when it is ready", file=sys.stderr, flush=True)
    server.run()
    return 1 if failed else 0
