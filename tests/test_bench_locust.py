"""``corolab bench --locust-workers``: a Locust master and two workers on 127.0.0.1 against the fake server.

One real run (a module fixture: three processes start in a few seconds on a busy machine) answers the
structural questions: every request counted once, records from both workers, both workers' users in
flight together (the server holds the first replies until all four users have a request in flight),
and corolab's numbers for the records the master summarized. The failures (no locust, no server, a
worker that dies) are refused before or while the processes start, and the synchronous client that the
workers use is held to the asyncio client's timestamps with a scripted clock.
"""

from __future__ import annotations

import asyncio
import ast
import io
import json
import socket
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest
from bench_support import StepClock

from corolab.bench import BenchConfig, summarize
from corolab.bench import locust_launch
from corolab.bench.clients import HttpChatClient
from corolab.bench.dataset import synthetic_prompts
from corolab.bench.fakeserver import FakeChatServer, chunk, instant_reply, usage
from corolab.bench.locust_launch import INSTALL_HINT, LocustError, LocustMissing, ServerUnreachable, run_locust
from corolab.bench.report import run_lines
from corolab.bench.runner import RunResult
from corolab.bench.sync_client import SyncChatClient
from corolab.cli import main

BENCH = Path(__file__).resolve().parents[1] / "src" / "corolab" / "bench"
WORKERS, USERS, REQUESTS, MAX_TOKENS = 2, 4, 24, 5


class ServerThread:
    """The fake chat server on its own event loop in a thread: the Locust processes, not this test's
    loop, are its clients, and ``run_locust`` blocks while they run."""

    def __init__(self, handler=instant_reply):
        self.handler = handler
        self.server: FakeChatServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with FakeChatServer(self.handler) as self.server:
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10), "the fake server did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def held_until_all_users_are_in(users: int):
    """A handler that holds every reply until ``users`` requests are in flight at once, then answers at
    once: the run can only finish if both workers' users sent their first requests together."""
    gate: asyncio.Event | None = None
    server_box: list[FakeChatServer] = []

    async def handler(request: dict, reply) -> None:
        nonlocal gate
        gate = gate or asyncio.Event()
        if server_box and server_box[0].in_flight >= users:
            gate.set()
        await asyncio.wait_for(gate.wait(), 30)
        await instant_reply(request, reply)

    return handler, server_box


@pytest.fixture(scope="module")
def locust_run(tmp_path_factory):
    handler, box = held_until_all_users_are_in(USERS)
    out = io.StringIO()
    json_path = tmp_path_factory.mktemp("locust") / "result.json"
    with ServerThread(handler) as st:
        box.append(st.server)
        config = BenchConfig(url=st.server.url, concurrency=USERS, requests=REQUESTS, max_tokens=MAX_TOKENS,
                             prompt_tokens=8, progress=False, timeout=30)
        result = run_locust(config, WORKERS, json_path=json_path, out=out)
        served, peak = st.server.served, st.server.peak
    return result, out.getvalue(), json_path, served, peak


def test_the_master_counts_every_request_once(locust_run):
    result, _, _, served, _ = locust_run
    [run] = result.runs
    assert not run.interrupted
    assert run.summary["requests"] == run.summary["completed"] == REQUESTS == served
    assert sorted(r.index for r in run.records) == list(range(REQUESTS))
    assert all(r.output_tokens == MAX_TOKENS and r.usage_from_server for r in run.records)


def test_both_workers_sent_their_share_at_the_same_time(locust_run):
    result, _, _, _, peak = locust_run
    records = result.runs[0].records
    assert all(r.worker == r.index % WORKERS for r in records)  # worker w sends w, w + W, w + 2W, ...
    assert Counter(r.worker for r in records) == {0: REQUESTS // 2, 1: REQUESTS // 2}
    assert result.config["records_by_worker"] == {"0": REQUESTS // 2, "1": REQUESTS // 2}
    assert peak == USERS  # the first replies waited until both workers' users were all in flight
    first = {w: min((r for r in records if r.worker == w), key=lambda r: r.start) for w in range(WORKERS)}
    assert max(r.start for r in first.values()) < min(r.end for r in first.values())  # they overlapped


def test_the_report_is_corolab_s_summary_of_those_records(locust_run):
    result, printed, json_path, _, _ = locust_run
    [run] = result.runs
    again = summarize(run.records)
    for metric in ("ttft", "itl", "tpot", "e2el"):
        assert run.summary[metric] == again[metric]
    assert (run.summary["duration"], run.summary["output_tokens"]) == (again["duration"], again["output_tokens"])
    for line in run_lines(RunResult("concurrency", USERS, run.records, again)):
        assert line in printed  # the master printed corolab's report of exactly these records
    saved = json.loads(json_path.read_text())
    assert len(saved["runs"][0]["records"]) == REQUESTS and saved["config"]["locust_workers"] == WORKERS


def test_a_stopped_server_is_one_clear_error(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket closes
    with pytest.raises(ServerUnreachable, match="cannot reach the server at http://127.0.0.1"):
        run_locust(BenchConfig(url=url, concurrency=2, requests=2, progress=False), 2)
    assert main(["bench", "--url", url, "--locust-workers", "2", "--concurrency", "2", "--requests", "2"]) == 2
    assert "cannot reach the server" in capsys.readouterr().err


def test_without_locust_the_message_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "locust", None)  # what an environment without locust answers
    with pytest.raises(LocustMissing, match=INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        run_locust(BenchConfig(url="http://127.0.0.1:9", concurrency=2, requests=2, progress=False), 2)
    assert main(["bench", "--url", "http://127.0.0.1:9", "--locust-workers", "2", "--concurrency", "2"]) == 2
    assert INSTALL_HINT in capsys.readouterr().err


def test_a_worker_that_dies_stops_the_run_with_its_log(monkeypatch):
    def broken_worker(port, master_host="127.0.0.1"):
        return [sys.executable, "-c", "import sys; print('worker blew up'); sys.exit(3)"]

    monkeypatch.setattr(locust_launch, "worker_command", broken_worker)
    with ServerThread() as st:
        config = BenchConfig(url=st.server.url, concurrency=2, requests=2, progress=False)
        with pytest.raises(LocustError, match=r"(?s)worker 0 exited with code 3.*worker blew up"):
            run_locust(config, 2, out=io.StringIO())


@pytest.mark.parametrize("shape, message", [
    (dict(concurrency=1), "fewer users than --locust-workers"),
    (dict(concurrency=[2, 4]), "one --concurrency"),
    (dict(rate=2.0), "one --concurrency"),
    (dict(concurrency=2, mode="ws"), "--mode stream or nonstream"),
])
def test_loads_locust_cannot_run_here_are_refused(shape, message):
    with pytest.raises(ValueError, match=message):
        locust_launch.check_shape(BenchConfig(requests=2, **shape), 2)


# --- the workers' client: the asyncio client's timestamps, without asyncio --------------------------------


async def streamed(request, reply):
    """Three content events, usage, [DONE]: five timed events after the request's own reading."""
    reply.start_stream()
    for i, text in enumerate(["a", "b", "c"]):
        reply.event(chunk(text, finish="stop" if i == 2 else None))
    reply.event(chunk(usage=usage(4, 3)))
    reply.event("[DONE]")
    reply.end_stream()


@pytest.mark.parametrize("mode, handler, reads", [("stream", streamed, 6), ("nonstream", instant_reply, 2)])
async def test_the_sync_client_times_a_request_as_the_asyncio_client_does(mode, handler, reads):
    readings = [10.0, 10.5, 10.75, 11.0, 11.5, 12.0]
    prompt = synthetic_prompts(1, max_tokens=3)[0]
    records = []
    async with FakeChatServer(handler) as server:
        for make in (lambda c: HttpChatClient(c, 1), lambda c: SyncChatClient(c, 1)):
            config = BenchConfig(url=server.url, mode=mode, clock=StepClock(readings[:reads]), progress=False)
            client = make(config)
            if isinstance(client, SyncChatClient):
                records.append(await asyncio.to_thread(client.request, 0, prompt))
                client.close()
            else:
                records.append(await client.request(0, prompt))
                await client.aclose()
            assert config.clock.reads == reads
    assert records[0].ok and asdict(records[0]) == asdict(records[1])


# --- where locust may be imported -------------------------------------------------------------------------


def test_only_the_locustfile_imports_locust():
    importers = []
    for path in sorted(BENCH.parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n.split(".")[0] in ("locust", "gevent") for n in names):
                importers.append(path.name)
    assert set(importers) == {"locust_users.py"}


def test_the_command_line_does_not_load_locust():
    code = ("import sys, corolab.cli, corolab.bench, corolab.bench.cli, corolab.bench.locust_launch; "
            "corolab.cli.build_parser(only='bench'); print(sorted(m for m in ('locust', 'gevent') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
