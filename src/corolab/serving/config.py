"""The server's settings in one dataclass: the ``corolab serve`` options, ``create_engine`` and
``create_app`` all read this, so a default is decided here and nowhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServeConfig:
    """Everything ``corolab serve`` can be told. Each field's default is the server's default."""

    model: str | None = None          # None: the embedded SmolLM2-135M-Instruct; "fake", "fake:0.05", an id or path
    engine: str = "batched"           # naive | threads | batched
    device: str = "auto"              # auto | cpu | cuda | mps
    dtype: str = "auto"               # auto | float32 | bfloat16 | float16
    quantize: str = "auto"            # auto | none | int8 (auto: int8 on a CPU, none elsewhere)
    attention: str = "exact"          # exact: row by row, a reply is the same in any batch | batched: faster
    threads: int | None = None        # torch's threads for model work; None: corolab.serving.backends.threads decides (tuned)
    prefix_cache: bool = True         # reuse the keys/values of the opening all prompts share
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_names: list[str] = field(default_factory=list)  # empty: the model id and gpt-3.5-turbo
    max_tokens: int = 256             # reply length when a request sets no limit
    max_batch_size: int = 32          # requests decoding together
    max_waiting: int = 256            # queued requests before answering 429
    prefill_budget: int = 512         # prompt tokens prefilled per engine step; longer prompts go in chunks
    max_body_bytes: int = 1 << 20     # largest request body (413 above it) or websocket frame (close 1009 above it)
    header_timeout: float = 5.0       # seconds a client has to send a request's headers (then the connection closes)
    body_timeout: float = 30.0        # seconds a client has for a request's whole body once its headers are in (408)
    log_level: str = "info"

    def validate(self) -> ServeConfig:
        """Refuse settings that cannot work, with a message that names the option."""
        for name in ("max_tokens", "max_batch_size", "prefill_budget", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("header_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be more than 0 seconds")
        if self.max_waiting < 0:
            raise ValueError("--max-waiting must be at least 0")
        if self.attention not in ("exact", "batched"):
            raise ValueError("--attention must be exact or batched")
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads must be at least 1")
        return self


def read_api_key(value: str | None, file: str | None) -> str | None:
    """The API key from ``--api-key-file`` (not visible in ``ps``), else ``--api-key``, else
    ``$COROLAB_API_KEY``. A key file holds the key on its first line."""
    if file:
        key = Path(file).read_text(encoding="utf-8").strip().splitlines()
        if not key or not key[0].strip():
            raise ValueError(f"the API key file {file} is empty")
        return key[0].strip()
    return value or os.environ.get("COROLAB_API_KEY") or None


__all__ = ["ServeConfig", "read_api_key"]
