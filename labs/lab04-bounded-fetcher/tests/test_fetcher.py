"""Graded tests for Lab 4. Each runs the student's fetcher against a real local server (labserver.py),
which reports from its side how many requests overlapped and which clients hung up.

Every test draws its inputs (words, delays, limits, which URL fails) from ``rng``, which the grader seeds
afresh for each grading run, and ``observe()``s what your fetcher computed from them: the results (the
path of each URL, status, body, error) and what the server counted. The grader compares that with what
the reference solution computes from the same inputs. Nothing timed is observed, only orders and counts
that the rules fix."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable

import pytest
from labserver import LabServer

from corolab.labs.grading import points
from corolab.labs.seeded import words

LIMIT = 10.0  # seconds any one test may take before it counts as hanging


def run(body: Callable[[LabServer], Awaitable[None]], gate: int = 0, waiting: str = "") -> None:
    """Run one async test body against a fresh server; a hang fails this test only, saying what the server saw
    (and ``waiting``: what the test was waiting for)."""

    async def main() -> str:
        async with LabServer(gate=gate) as server:
            try:
                async with asyncio.timeout(LIMIT) as deadline:
                    await body(server)
            except TimeoutError:
                if not deadline.expired():
                    raise
                return f"still waiting after {LIMIT:g} s{waiting and ' (' + waiting + ')'}: {saw(server)}"
        return ""

    stuck = asyncio.run(main())
    if stuck:
        pytest.fail(stuck, pytrace=False)


def path(url: str) -> str:
    """The URL without scheme, host and port (the port changes from run to run)."""
    return "/" + url.split("/", 3)[-1]


def seen(results: list) -> list[dict]:
    """The results as plain data for observe()."""
    return [{"path": path(r.url), "status": r.status, "body": r.body, "error": r.error} for r in results]


def saw(server: LabServer) -> str:
    return (f"the server saw {len(server.started)} request(s), at most {server.max_in_flight} in flight at once, "
            f"{server.in_flight} still open")


async def fetch_all(student, server: LabServer, urls: list[str], **options) -> list:
    """The student's fetch_all(urls, **options); an exception out of it fails the test, saying which."""
    try:
        return await student.fetch_all(urls, **options)
    except Exception as exc:
        inner = ", ".join(type(e).__name__ for e in getattr(exc, "exceptions", []))
        raise AssertionError(f"fetch_all raised {type(exc).__name__}{inner and ' (' + inner + ')'}; every URL "
                             f"should give a Result, failures included ({saw(server)})") from exc


def answers(results: list) -> list[str]:
    """Each result's body, or its error in brackets: what a failed assert shows."""
    return [r.body if r.error is None else f"<{r.error}>" for r in results]


def closed_port_url(word: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/text/{word}"


@points(3, hint="Keep one task per URL in a list and read the results from that list, not as they finish.")
def test_results_in_input_order(student, rng: random.Random, observe) -> None:
    n = rng.randint(3, 5)
    texts = words(rng, n)
    delays = sorted(rng.sample(range(0, 251, 50), n))      # milliseconds, at least 50 apart
    slowest = delays.pop()
    rng.shuffle(delays)
    delays.insert(0, slowest)                              # the first URL always finishes last

    async def body(server: LabServer) -> None:
        urls = [f"{server.url}/delay/{ms}/{text}" for ms, text in zip(delays, texts)]
        results = await fetch_all(student, server, urls, limit=n)
        observe(seen(results))
        got = [path(r.url) for r in results]
        expected = [path(url) for url in urls]
        assert got == expected, f"expected the results in the order of the URLs {expected!r}, got {got!r}"
        assert answers(results) == texts, f"expected the bodies {texts!r}, got {answers(results)!r}"
        assert all(r.status == 200 and r.error is None for r in results), f"every URL answers 200: {results!r}"

    run(body)


@points(3, hint="Start every request as a task (asyncio.create_task or a TaskGroup), then wait for all.")
def test_requests_overlap(student, rng: random.Random, observe) -> None:
    limit = rng.randint(2, 5)
    texts = words(rng, limit + rng.randint(1, 4))

    async def body(server: LabServer) -> None:
        # /gate answers only once `limit` requests are in flight at the same time: one-at-a-time never gets there.
        urls = [f"{server.url}/gate/{text}" for text in texts]
        results = await fetch_all(student, server, urls, limit=limit, timeout=2)
        observe({"results": seen(results), "most in flight": server.max_in_flight})
        assert answers(results) == texts, (f"/gate answers once {limit} requests are in flight at once: expected the "
                                           f"bodies {texts!r}, got {answers(results)!r}")
        assert server.max_in_flight == limit, (f"with limit={limit}, {limit} requests should be in flight at once; "
                                               f"the server saw at most {server.max_in_flight}")

    run(body, gate=limit, waiting=f"/gate answers once {limit} requests are in flight at once")


@points(3, hint="Hold an asyncio.Semaphore(limit) around each request, inside the task.")
def test_never_more_than_limit_in_flight(student, rng: random.Random, observe) -> None:
    limit = rng.randint(2, 4)
    texts = words(rng, 3 * limit + rng.randint(0, 3))
    delays = [rng.randint(20, 40) for _ in texts]

    async def body(server: LabServer) -> None:
        urls = [f"{server.url}/delay/{ms}/{text}" for ms, text in zip(delays, texts)]
        results = await fetch_all(student, server, urls, limit=limit)
        observe({"results": seen(results), "at most limit in flight": server.max_in_flight <= limit})
        assert answers(results) == texts, f"expected the bodies {texts!r}, got {answers(results)!r}"
        assert server.max_in_flight <= limit, (f"{server.max_in_flight} requests were in flight at once; "
                                               f"the limit was {limit}")

    run(body)


@points(1, hint="Check limit before doing anything else: raise ValueError when it is below 1.")
def test_limit_must_be_positive(student, rng: random.Random, observe) -> None:
    limits = [0, rng.randint(-5, -1), rng.randint(1, 3)]
    rng.shuffle(limits)
    texts = words(rng, 3)

    async def body(server: LabServer) -> None:
        urls = [f"{server.url}/text/{text}" for text in texts]
        outcomes = []
        for limit in limits:
            before = len(server.started)
            try:
                async with asyncio.timeout(2):
                    outcome = [r.body for r in await student.fetch_all(urls, limit=limit)]
            except ValueError as exc:
                outcome = type(exc).__name__
            except TimeoutError:
                outcome = "no answer within 2 s"
            outcomes.append({"limit": limit, "outcome": outcome, "requests": len(server.started) - before})
        observe(outcomes)
        for case in outcomes:
            limit, outcome, requests = case["limit"], case["outcome"], case["requests"]
            if limit < 1:
                assert outcome == "ValueError", f"fetch_all(urls, limit={limit}) should raise ValueError, got {outcome!r}"
                assert requests == 0, f"fetch_all(urls, limit={limit}) sent {requests} requests before refusing"
            else:
                assert outcome == texts, f"fetch_all(urls, limit={limit}) should fetch {texts!r}, got {outcome!r}"

    run(body)


@points(3, hint="Wrap each request in `async with asyncio.timeout(timeout)` and turn TimeoutError into a Result.")
def test_a_slow_request_times_out_alone(student, rng: random.Random, observe) -> None:
    texts = words(rng, rng.randint(2, 4))
    hang_at = rng.randint(0, len(texts))
    limit = rng.randint(2, len(texts) + 1)

    async def body(server: LabServer) -> None:
        urls = [f"{server.url}/text/{text}" for text in texts]
        urls.insert(hang_at, f"{server.url}/hang")
        results = await fetch_all(student, server, urls, limit=limit, timeout=0.3)
        observe(seen(results))
        slow = results[hang_at]
        assert (slow.error, slow.status) == ("timeout", None), \
            f"{path(urls[hang_at])} never answers: expected Result(error='timeout', status=None), got {slow!r}"
        others = [r.body for i, r in enumerate(results) if i != hang_at]
        assert others == texts, f"the other URLs should still give {texts!r}, got {others!r}"
        await server.wait_until(lambda: server.hangups == 1)  # the timed-out request was really closed
        observe({"hung up": server.hangups})

    run(body)


@points(2, hint="Start the timeout inside the semaphore: time spent waiting for a slot is not the request's.")
def test_timeout_counts_from_when_the_request_starts(student, rng: random.Random, observe) -> None:
    texts = words(rng, 2)
    delays = [rng.randint(550, 650) for _ in texts]

    async def body(server: LabServer) -> None:
        # One slot: the second request waits ~0.6 s for it, then takes ~0.6 s itself; 1.0 s each is plenty.
        urls = [f"{server.url}/delay/{ms}/{text}" for ms, text in zip(delays, texts)]
        results = await fetch_all(student, server, urls, limit=1, timeout=1.0)
        got = [(r.body, r.error) for r in results]
        observe(got)
        expected = [(text, None) for text in texts]
        assert got == expected, (f"two requests of {delays[0]} and {delays[1]} ms, one slot, timeout=1.0 s: "
                                 f"expected (body, error) {expected!r}, got {got!r}")

    run(body)


@points(2, hint="Catch httpx.HTTPError per request: Result(url, error=type(error).__name__).")
def test_errors_become_results_and_the_rest_go_on(student, rng: random.Random, observe) -> None:
    nobody, fine = words(rng, 2)
    code = rng.choice([404, 500, 503])
    order = rng.sample(range(3), 3)
    limit = rng.randint(1, 3)

    async def body(server: LabServer) -> None:
        cases = [closed_port_url(nobody), f"{server.url}/status/{code}", f"{server.url}/text/{fine}"]
        urls = [cases[i] for i in order]
        results = await fetch_all(student, server, urls, limit=limit)
        observe(seen(results))
        refused, status, text = (results[order.index(i)] for i in range(3))
        assert (refused.error, refused.status) == ("ConnectError", None), \
            f"nothing listens at {path(cases[0])}'s port: expected Result(error='ConnectError', status=None), got {refused!r}"
        assert (status.status, status.error) == (code, None), \
            f"an HTTP {code} is an answer, not an error: expected status={code}, error=None, got {status!r}"
        assert (text.status, text.body) == (200, fine), f"expected status 200 and body {fine!r}, got {text!r}"

    run(body)


@points(3, hint="Do not catch CancelledError; a TaskGroup (or gather) cancels the requests when fetch_all is.")
def test_cancelling_fetch_all_cancels_every_request(student, rng: random.Random, observe) -> None:
    limit = rng.randint(2, 4)
    n = limit + rng.randint(1, 3)
    text = words(rng, 1)[0]

    async def body(server: LabServer) -> None:
        urls = [f"{server.url}/hang/{text}"] * n               # none of them ever answers
        task = asyncio.create_task(student.fetch_all(urls, limit=limit, timeout=30))
        await server.wait_until(lambda: server.in_flight >= limit)
        task.cancel()
        try:
            outcome = f"returned {await task!r}"
        except asyncio.CancelledError as exc:
            outcome = type(exc).__name__
        assert outcome == "CancelledError", f"the caller should get CancelledError from the cancelled fetch_all; it {outcome}"
        await server.wait_until(lambda: server.in_flight == 0)    # every open request was closed
        observe({"caller got": outcome, "started": server.started, "hung up": server.hangups})
        assert len(server.started) == limit, (f"{n} URLs with limit={limit}: {limit} requests should have started "
                                              f"before the cancel and none after it; the server saw {len(server.started)}")
        assert server.hangups == limit, f"all {limit} requests in flight should be closed; {server.hangups} were"

    run(body, waiting=f"{n} URLs that never answer, limit={limit}; after the cancel, every request should close")
