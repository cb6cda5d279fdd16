"""Keep API keys out of every log line (a filter that :mod:`corolab.serving.server.uvicorn_setup` puts on each handler).

A module of its own so that both the CLI and the uvicorn settings can use it without importing each other.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, quote_plus


class RedactKeys(logging.Filter):
    """Keep API keys out of every log line: ``?api_key=...`` (a browser's websocket) becomes
    ``api_key=***``, and the server's own key, wherever it appears (raw or URL-encoded), becomes ``***``.
    :func:`corolab.serving.server.uvicorn_setup.log_config` puts it on every log handler."""

    pattern = re.compile(r"(api(?:_|%5f)key=)[^&\s\"']*", re.IGNORECASE)

    def __init__(self, secret: str | None = None) -> None:
        super().__init__()
        forms = {secret, quote(secret, safe=""), quote_plus(secret)} if secret else set()
        self.secrets = sorted(forms, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return self.pattern.sub(r"\1***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):  # uvicorn's access formatter reads the arguments by position
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self.redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        record.msg = self.redact(str(record.msg))
        return True
