"""A locustfile: ``corolab bench``'s streamed chat request as a Locust user, with corolab's own metrics.

One asyncio load generator is one process on one core. When that core is the limit, Locust splits the
users over worker processes, on this machine or on others, and a master that steers them. This file is
what every Locust process loads (``locust -f``): the workers send the same request as ``corolab bench``
(same body, prompts and endpoint, through :class:`~corolab.bench.sync_client.SyncChatClient`), time it
into :class:`~corolab.bench.records.RequestRecord` objects and fire Locust's ``request`` event, so
Locust's own statistics and web UI work too. The records travel to the master with Locust's periodic
worker report (``report_to_master`` → ``worker_report``); a worker whose share is done sends the rest
in a ``corolab_done`` message that says how many records it made. When every worker's records are in,
the master summarizes them all with :func:`corolab.bench.metrics.summarize`, prints corolab's report and
writes it as JSON (``--corolab-json``), then ends the test.

The run is bounded as a one-process run is: ``requests`` in all (worker *w* of *W* sends requests
*w*, *w* + *W*, *w* + 2 *W*, …, so each prompt index is sent once) and/or ``duration`` (no request
starts after it). Record timestamps are shifted to seconds since the master's start on the wall clock,
so one run's window spans every worker (machines must have synchronized clocks, as Locust asks).

Locust runs on gevent: this is the only corolab module that imports locust, and nothing imports it;
``corolab bench --locust-workers`` (``corolab.bench.locust_launch``) starts the processes that load it.
Imports are absolute on purpose: Locust loads this file by path, not as part of the package.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict

import gevent
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from corolab.bench.config import BenchConfig
from corolab.bench.dataset import prompts_for
from corolab.bench.metrics import summarize
from corolab.bench.records import RequestRecord
from corolab.bench.runner import BenchResult, RunResult
from corolab.bench.sync_client import SyncChatClient

RECORDS = "corolab_records"  # the key of a worker report that carries records
DONE = "corolab_done"  # a worker's last message: its remaining records and how many it made in all
TIME_FIELDS = ("start", "first_token", "end")

logging.getLogger("httpx").setLevel(logging.WARNING)  # not one log line per request in a worker's log


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    """Locust passes options it does not know from the master to every worker with the spawn message."""
    parser.add_argument("--corolab-config", default="{}", include_in_web_ui=False,
                        help="corolab BenchConfig fields as JSON (url, mode, requests, duration, max_tokens, ...)")
    parser.add_argument("--corolab-json", default="", include_in_web_ui=False,
                        help="master: write corolab's result (with every record) to this JSON file")
    parser.add_argument("--corolab-epoch", type=float, default=0.0, include_in_web_ui=False,
                        help="set by the master: the wall-clock second that record timestamps count from")


def bench_config(options) -> BenchConfig:
    """The run's BenchConfig: the JSON fields given, BenchConfig's defaults for the rest."""
    return BenchConfig(**json.loads(options.corolab_config))


class RequestFailed(Exception):
    """What Locust's statistics show for a failed request: corolab's error kind and its detail."""


# --- the worker's side ----------------------------------------------------------------------------------


class WorkerShare:
    """This worker's part of the run: which request comes next, and the records not yet sent."""

    def __init__(self, config: BenchConfig, worker: int, workers: int, epoch: float):
        self.config, self.worker, self.workers = config, worker, workers
        self.prompts = prompts_for(config)
        self.next_index = worker
        self.over = worker >= workers  # a worker beyond --expect-workers gets no share: no index twice
        self.deadline: float | None = None  # set by the first take: the run starts with its first request
        # clock reading + shift = seconds since the master's epoch on the wall clock
        self.shift = time.time() - config.clock() - epoch
        self.pending: list[dict] = []
        self.made = self.in_flight = 0
        # one client for the worker's users: its pool keeps a connection per user alive, and its TLS
        # context is built once, not once per user while the others wait
        self.client = SyncChatClient(config, pool_size=None, deadline=gevent_deadline)
        self.announced = False

    def take(self) -> int | None:
        """The next request index, or None once the share is spent or the duration has passed."""
        if self.deadline is None and self.config.duration is not None:
            self.deadline = self.config.clock() + self.config.duration
        limit, deadline = self.config.requests, self.deadline
        if self.over or (limit is not None and self.next_index >= limit) or \
                (deadline is not None and self.config.clock() >= deadline):
            self.over = True
            return None
        index, self.next_index = self.next_index, self.next_index + self.workers
        return index

    def keep(self, rec: RequestRecord) -> None:
        """Tag the record with this worker and shift its timestamps to the master's clock. The reply's
        text stays here: the metrics do not read it, and it is most of a record's bytes."""
        row = asdict(rec) | {"text": ""}
        for name in TIME_FIELDS:
            if row[name] is not None:
                row[name] += self.shift
        row["chunk_times"] = [t + self.shift for t in row["chunk_times"]]
        row["worker"] = self.worker
        self.pending.append(row)
        self.made += 1

    def drain(self) -> list[dict]:
        rows, self.pending = self.pending, []
        return rows

    def finished(self) -> bool:
        """True once, for the last user to find the share spent with nothing in flight."""
        if self.over and self.in_flight == 0 and not self.announced:
            self.announced = True
            return True
        return False


_share: WorkerShare | None = None


@contextmanager
def gevent_deadline(seconds: float):
    """A whole-request deadline that interrupts a waiting read, as ``asyncio.timeout`` does."""
    timer = gevent.Timeout(seconds)
    timer.start()
    try:
        yield
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise TimeoutError from None
    finally:
        timer.close()


class ChatUser(User):
    """One closed-loop user: sends the next request of its worker's share as soon as the last one ends."""

    wait_time = constant(0)

    def on_start(self) -> None:
        assert _share is not None, "a ChatUser runs only on a worker whose test has started"
        self.share = _share
        self.client = _share.client

    @task
    def chat(self) -> None:
        share = self.share
        index = share.take()
        if index is None:
            if share.finished():
                runner = self.environment.runner
                runner.send_message(DONE, {"worker": share.worker, "made": share.made, RECORDS: share.drain()})
            raise StopUser
        share.in_flight += 1
        try:
            rec = self.client.request(index, share.prompts[index % len(share.prompts)])
        finally:
            share.in_flight -= 1
        share.keep(rec)
        self.environment.events.request.fire(
            request_type="POST", name=f"chat ({share.config.mode})",
            response_time=(rec.e2el if rec.e2el is not None else share.config.clock() - rec.start) * 1e3,
            response_length=rec.output_tokens, response=None, context={"ttft": rec.ttft},
            exception=None if rec.ok else RequestFailed(f"{rec.error}: {rec.detail}"),
        )


@events.test_start.add_listener
def _worker_starts(environment, **kwargs) -> None:
    global _share
    runner, options = environment.runner, environment.parsed_options
    if isinstance(runner, WorkerRunner):
        _share = WorkerShare(bench_config(options), runner.worker_index, options.expect_workers,
                             options.corolab_epoch)


@events.report_to_master.add_listener
def _send_records(client_id, data, **kwargs) -> None:
    if _share is not None:
        data[RECORDS] = _share.drain()


# --- the master's side ----------------------------------------------------------------------------------


class Collector:
    """Every worker's records, and whether they are all in: each worker announced its count and the
    master holds that many of its records (a report and the last message may arrive in either order)."""

    def __init__(self, config: BenchConfig, workers: int, users: int):
        self.config, self.workers, self.users = config, workers, users
        self.records: list[RequestRecord] = []
        self.received: Counter[int] = Counter()
        self.announced: dict[int, int] = {}
        self.bar = None
        if config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.requests, desc=f"bench locust c={users} x{workers}",
                            unit="req", leave=False, file=sys.stdout)

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            self.records.append(RequestRecord(**row))
            self.received[row["worker"]] += 1
        if self.bar is not None and rows:
            self.bar.update(len(rows))

    def announce(self, worker: int, made: int) -> None:
        self.announced[worker] = made

    @property
    def complete(self) -> bool:
        return set(range(self.workers)) <= self.announced.keys() and all(
            self.received[w] == n for w, n in self.announced.items())

    def result(self) -> BenchResult:
        """corolab's result for the whole run: one run at the concurrency the workers shared."""
        config = self.config
        records = sorted(self.records, key=lambda r: r.index)
        summary = summarize(records, ttft_limit=config.ttft_limit, tpot_limit=config.tpot_limit)
        run = RunResult("concurrency", self.users, records, summary, interrupted=not self.complete)
        described = config.describe() | {"locust_workers": self.workers,
                                         "records_by_worker": dict(sorted(self.received.items()))}
        return BenchResult(described, [run])


_collector: Collector | None = None
_master = None  # the master's Environment


@events.init.add_listener
def _master_init(environment, **kwargs) -> None:
    global _master
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        return
    _master = environment
    if not environment.parsed_options.corolab_epoch:
        environment.parsed_options.corolab_epoch = time.time()

    def on_done(environment, msg, **kw) -> None:
        if _collector is not None:
            _collector.add(msg.data[RECORDS])
            _collector.announce(msg.data["worker"], msg.data["made"])
            _end_when_complete()

    runner.register_message(DONE, on_done)


@events.test_start.add_listener
def _master_starts(environment, **kwargs) -> None:
    global _collector
    if isinstance(environment.runner, MasterRunner):
        options = environment.parsed_options
        config = bench_config(options)  # the users are Locust's -u, which the workers share
        _collector = Collector(config, options.expect_workers, options.num_users or int(config.levels()[0][1]))


@events.worker_report.add_listener
def _receive_records(client_id, data, **kwargs) -> None:
    if _collector is not None and data.get(RECORDS):
        _collector.add(data[RECORDS])
        _end_when_complete()


_ending = False


def _end_when_complete() -> None:
    """All records in: end the test, in a greenlet of its own (quitting kills the runner's greenlets,
    the one that delivered this message among them)."""
    global _ending
    if _collector is not None and _collector.complete and not _ending and _master is not None:
        _ending = True
        gevent.spawn(_master.runner.quit)


@events.test_stop.add_listener
def _master_reports(environment, **kwargs) -> None:
    """Print corolab's report of every worker's records, and write it as JSON when asked."""
    if not isinstance(environment.runner, MasterRunner) or _collector is None:
        return
    if _collector.bar is not None:
        _collector.bar.close()
    result = _collector.result()
    print(result.table(), flush=True)
    if path := environment.parsed_options.corolab_json:
        partial = f"{path}.partial"
        result.to_json(partial)
        os.replace(partial, path)  # whoever waits for the file never reads half of it
