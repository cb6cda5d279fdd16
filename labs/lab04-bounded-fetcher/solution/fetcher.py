"""Lab 4: a bounded-concurrency fetcher (instructor solution)."""

from __future__ import annotations

import asyncio
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
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    urls = list(urls)
    slots = asyncio.Semaphore(limit)

    async with httpx.AsyncClient() as client:

        async def fetch_in_slot(url: str) -> Result:
            async with slots:
                try:
                    async with asyncio.timeout(timeout):      # starts when the request does
                        return await fetch_one(client, url)
                except TimeoutError:
                    return Result(url, error="timeout")
                except httpx.HTTPError as error:
                    return Result(url, error=type(error).__name__)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(fetch_in_slot(url)) for url in urls]
    return [task.result() for task in tasks]
