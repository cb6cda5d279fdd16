"""Realistic, reproducible web-server access logs for the generator chapters and Lab 1.

The book cannot download a real log, and a toy list of three strings teaches nothing about laziness.
This module writes lines in the Apache/nginx "combined" format from a seeded random generator, so every
reader gets the same file and the chapters can assert exact counts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

PATHS = (
    "/", "/index.html", "/about", "/docs/generators", "/docs/coroutines", "/docs/asyncio",
    "/api/v1/chat/completions", "/api/v1/models", "/static/app.js", "/static/style.css",
    "/favicon.ico", "/robots.txt", "/login", "/search?q=yield",
)
METHODS = ("GET",) * 8 + ("POST", "HEAD")
STATUSES = (200,) * 14 + (304, 301, 404, 404, 500, 503)
AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "python-httpx/0.28.1", "Googlebot/2.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)",
)
START = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone.utc)


def iter_access_log_lines(n: int, seed: int = 0) -> Iterator[str]:
    """Yield ``n`` log lines (without newline), lazily: a generator, as Part I would have it."""
    rng = random.Random(seed)
    when = START
    for _ in range(n):
        when += timedelta(milliseconds=rng.randint(5, 2_000))
        host = f"10.{rng.randint(0, 3)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        method, path, status = rng.choice(METHODS), rng.choice(PATHS), rng.choice(STATUSES)
        size = "-" if status == 304 or method == "HEAD" else str(rng.randint(120, 48_000))
        stamp = when.strftime("%d/%b/%Y:%H:%M:%S %z")
        yield (f'{host} - - [{stamp}] "{method} {path} HTTP/1.1" {status} {size} "-" '
               f'"{rng.choice(AGENTS)}"')


def make_access_log_lines(n: int, seed: int = 0) -> list[str]:
    """The same lines as a list, for tests that want to index them."""
    return list(iter_access_log_lines(n, seed))


def write_access_log(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` lines to ``path`` (one per line) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for line in iter_access_log_lines(n, seed):
            f.write(line + "\n")
    return path
