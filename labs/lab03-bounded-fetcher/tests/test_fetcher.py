"""Graded tests for Lab 3. Each runs the student's fetcher against a real local server (labserver.py),
which reports from its side how many requests overlapped and which clients hung up."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
from labserver import LabServer

from corolab.labs.grading import points

LIMIT = 10.0  # seconds any one test may take before it counts as hanging


def run(body: Callable[[LabServer], Awaitable[None]], gate: int = 0) -> None:
    """Run one async test body against a fresh server; a hang fails this test only."""

    async def main() -> None:
        async with LabServer(gate=gate) as server:
            await asyncio.wait_for(body(server), LIMIT)

    asyncio.run(main())


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/text/nobody-home"


@points(3, hint="Keep one task per URL in a list and read the results from that list, not as they finish.")
def test_results_in_input_order(student) -> None:
    async def body(server: LabServer) -> None:
        words = ["a", "b", "c", "d"]
        urls = [f"{server.url}/delay/{300 - 100 * i}/{w}" for i, w in enumerate(words)]  # last finishes first
        results = await student.fetch_all(urls, limit=4)
        assert [r.url for r in results] == urls
        assert [r.body for r in results] == words
        assert all(r.status == 200 and r.error is None for r in results)

    run(body)


@points(3, hint="Start every request as a task (asyncio.create_task or a TaskGroup), then wait for all.")
def test_requests_overlap(student) -> None:
    async def body(server: LabServer) -> None:
        # /gate answers only once 4 requests are in flight at the same time: one-at-a-time never gets there.
        urls = [f"{server.url}/gate/{i}" for i in range(8)]
        results = await student.fetch_all(urls, limit=4, timeout=5)
        assert [r.body for r in results] == [str(i) for i in range(8)]
        assert server.max_in_flight == 4

    run(body, gate=4)


@points(3, hint="Hold an asyncio.Semaphore(limit) around each request, inside the task.")
def test_never_more_than_limit_in_flight(student) -> None:
    async def body(server: LabServer) -> None:
        urls = [f"{server.url}/delay/30/{i}" for i in range(12)]
        results = await student.fetch_all(urls, limit=3)
        assert len(results) == 12
        assert server.max_in_flight <= 3, f"{server.max_in_flight} requests were in flight at once"
        assert server.max_in_flight == 3

    run(body)


@points(1, hint="Check limit before doing anything else: raise ValueError when it is below 1.")
def test_limit_must_be_positive(student) -> None:
    async def body(server: LabServer) -> None:
        with pytest.raises(ValueError):
            await student.fetch_all([f"{server.url}/text/x"], limit=0)

    run(body)


@points(3, hint="Wrap each request in `async with asyncio.timeout(timeout)` and turn TimeoutError into a Result.")
def test_a_slow_request_times_out_alone(student) -> None:
    async def body(server: LabServer) -> None:
        urls = [f"{server.url}/hang", f"{server.url}/text/a", f"{server.url}/text/b"]
        results = await student.fetch_all(urls, limit=3, timeout=0.3)
        assert results[0].error == "timeout" and results[0].status is None
        assert [r.body for r in results[1:]] == ["a", "b"]
        await server.wait_until(lambda: server.hangups == 1)  # the timed-out request was really closed

    run(body)


@points(2, hint="Start the timeout inside the semaphore: time spent waiting for a slot is not the request's.")
def test_timeout_counts_from_when_the_request_starts(student) -> None:
    async def body(server: LabServer) -> None:
        # One slot: the second request waits ~0.6 s for it, then takes ~0.6 s itself; 1.0 s each is plenty.
        urls = [f"{server.url}/delay/600/first", f"{server.url}/delay/600/second"]
        results = await student.fetch_all(urls, limit=1, timeout=1.0)
        assert [(r.body, r.error) for r in results] == [("first", None), ("second", None)]

    run(body)


@points(2, hint="Catch httpx.HTTPError per request: Result(url, error=type(error).__name__).")
def test_errors_become_results_and_the_rest_go_on(student) -> None:
    async def body(server: LabServer) -> None:
        urls = [closed_port_url(), f"{server.url}/status/500", f"{server.url}/text/fine"]
        results = await student.fetch_all(urls, limit=2)
        assert results[0].error == "ConnectError" and results[0].status is None
        assert (results[1].status, results[1].error) == (500, None)  # an HTTP status is an answer, not an error
        assert (results[2].status, results[2].body) == (200, "fine")

    run(body)


@points(3, hint="Do not catch CancelledError; a TaskGroup (or gather) cancels the requests when fetch_all is.")
def test_cancelling_fetch_all_cancels_every_request(student) -> None:
    async def body(server: LabServer) -> None:
        task = asyncio.create_task(student.fetch_all([f"{server.url}/hang"] * 6, limit=3, timeout=30))
        await server.wait_until(lambda: server.in_flight == 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.wait_until(lambda: server.hangups == 3)   # every open request was closed
        assert len(server.started) == 3                          # and none was started after the cancel

    run(body)
