"""The serving stack's settings in two dataclasses, and the one validator: every setting's default is
written here and nowhere else (``tests/test_settings.py`` fails on a default restated elsewhere).

- :class:`ModelConfig`: what a backend needs to load and run a model (model, device, dtype, quantize,
  attention, KV cache dtype, threads, prefix cache). ``load_backend`` and the backends take it.
- :class:`ServeConfig`: everything ``corolab serve`` can be told. It is a :class:`ModelConfig` with the
  server's settings added, so one object goes from the command line to the backend, the engine, the
  scheduler and the app. The CLI's options, ``create_engine``, ``Scheduler`` and ``create_app`` all read it.

The allowed values of the named settings are ``Literal`` types in :mod:`corolab.serving.choices`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from corolab.serving.choices import Attention, Device, Dtype, EngineKind, KvCacheDtype, LogLevel, Quantization, choices

#: Each named setting's allowed values, checked by :meth:`ModelConfig.validate`.
_ALLOWED: dict[str, object] = {"device": Device, "dtype": Dtype, "quantize": Quantization, "attention": Attention,
                               "kv_cache_dtype": KvCacheDtype, "engine": EngineKind, "log_level": LogLevel}


#: What a browser's ``Origin`` header holds: a scheme, a host and maybe a port, nothing after.
_ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[^/?#\s:\[\]]+)(:[0-9]{1,5})?")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class ModelConfig:
    """What a model backend is told. Each field's default is the server's default."""

    model: str | None = None          # None: the embedded SmolLM2-135M-Instruct; "fake", "fake:0.05", an id or path
    device: Device = "auto"
    dtype: Dtype = "auto"
    quantize: Quantization = "auto"   # auto: int8 on a CPU in float32, none elsewhere
    attention: Attention = "exact"    # exact: row by row, a reply is the same in any batch | batched: faster
    kv_cache_dtype: KvCacheDtype = "auto"  # auto: the model's dtype; float16 halves a float32 model's cache
    threads: int | None = None        # torch's threads for model work; None: tuned while serving (cpu.torch_threads)
    prefix_cache: bool = True         # reuse the keys/values of the opening all prompts share

    def validate(self) -> ModelConfig:
        """Refuse settings that cannot work, with a message that names the option. Named settings are
        checked against their ``Literal`` type, so the allowed values are listed once."""
        for f in fields(self):
            kind = _ALLOWED.get(f.name)
            if kind is not None and getattr(self, f.name) not in choices(kind):
                raise ValueError(f"unknown {_flag(f.name)} {getattr(self, f.name)!r}; use "
                                 + ", ".join(choices(kind)))
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads must be at least 1")
        return self


@dataclass
class ServeConfig(ModelConfig):
    """Everything ``corolab serve`` can be told: the model's settings and the server's."""

    engine: EngineKind = "batched"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_names: list[str] = field(default_factory=list)  # empty: the model id and gpt-3.5-turbo
    max_tokens: int = 256             # reply length when a request sets no limit
    max_batch_size: int = 128         # requests decoding together (fewer when their KV cache would pass kv_cache_gib)
    kv_cache_gib: float = 4.0         # GiB the batch's KV cache may reach, counting each request's prompt and reply limit
    max_waiting: int = 256            # queued requests before answering 429
    prefill_budget: int = 2048        # prompt tokens prefilled per engine step; longer prompts go in chunks (vLLM's CPU default)
    max_body_bytes: int = 1 << 20     # largest request body (413 above it) or websocket frame (close 1009 above it)
    header_timeout: float = 5.0       # seconds a client has to send a request's headers (then the connection closes)
    body_timeout: float = 30.0        # seconds a client has for a request's whole body once its headers are in (408)
    drain_timeout: float = 5.0        # seconds replies running at SIGTERM/SIGINT may go on; then each ends with an error
    log_level: LogLevel = "info"
    cors_origins: list[str] = field(default_factory=list)  # pages elsewhere whose scripts may call the API; empty: none

    def validate(self) -> ServeConfig:
        """The model's checks, then the server's limits."""
        super().validate()
        for name in ("max_tokens", "max_batch_size", "prefill_budget", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be at least 1")
        for name in ("header_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{_flag(name)} must be more than 0 seconds")
        if not self.kv_cache_gib > 0:
            raise ValueError("--kv-cache-gib must be more than 0")
        if self.max_waiting < 0:
            raise ValueError("--max-waiting must be at least 0")
        if not self.drain_timeout >= 0:  # 0: end every running reply at once, with its error event
            raise ValueError("--drain-timeout must be at least 0 seconds")
        for origin in self.cors_origins:  # a browser sends scheme://host[:port] exactly: anything else never matches
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"--cors-origin {origin!r} is not an origin: write scheme://host[:port] "
                                 "(no path, no trailing slash), e.g. http://localhost:5173, or *")
        return self

    @property
    def kv_cache_bytes(self) -> int:
        """``kv_cache_gib`` in bytes: the budget the scheduler admits by and the engines refuse by."""
        return int(self.kv_cache_gib * 2**30)

    def model_config(self) -> ModelConfig:
        """The model side alone, for code that should not see the server's settings."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})


def read_api_key(value: str | None, file: str | None) -> str | None:
    """The API key from ``--api-key-file`` (not visible in ``ps``), else ``--api-key``, else
    ``$COROLAB_API_KEY``. A key file holds the key on its first line."""
    if file:
        key = Path(file).read_text(encoding="utf-8").strip().splitlines()
        if not key or not key[0].strip():
            raise ValueError(f"the API key file {file} is empty")
        return key[0].strip()
    return value or os.environ.get("COROLAB_API_KEY") or None


__all__ = ["ModelConfig", "ServeConfig", "read_api_key"]
