"""Lab 4: a bounded-concurrency fetcher. Run `corolab lab check 4` to see your score.

``fetch_all`` below works, one URL after another. Make it concurrent without letting it run wild:
read the README's rules, then change ``fetch_all`` (and only add helpers you need).
"""

from __future__ import annotations

import asyncio  # noqa: F401  (you will need it)
from collections.abc import Iterable
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Result:
    """What happened to one URL: a status and body, or the kind of error."""

    url: str
    status: int | None = None
    body: str = ""
    error: str | None = None     # "timeout", or the name of the httpx exception


async def fetch_one(client: httpx.AsyncClient, url: str) -> Result:
    """Fetch one URL. Given: this part is done."""
    response = await client.get(url)
    return Result(url, response.status_code, response.text)


async def fetch_all(urls: Iterable[str], *, limit: int = 4, timeout: float = 2.0) -> list[Result]:
    """Fetch every URL with at most ``limit`` requests in flight; one result per URL, in input order."""
    # TODO: at most `limit` requests at once (asyncio.Semaphore), all of them started as tasks.
    # TODO: each request gets `timeout` seconds from the moment it starts -> Result(url, error="timeout").
    # TODO: an httpx error becomes Result(url, error=<the exception's class name>); the others go on.
    # TODO: limit < 1 is a ValueError; cancelling fetch_all cancels every request in flight.
    results = []
    async with httpx.AsyncClient() as client:
        for url in urls:
            results.append(await fetch_one(client, url))
    return results
