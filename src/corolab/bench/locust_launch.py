"""``corolab bench --locust-workers N``: a Locust master and N workers on 127.0.0.1, and corolab's report.

Why processes: one asyncio load generator runs on one core, and past a few thousand requests a second
(``corolab bench --self-test``) that core, not the server, sets the numbers. Locust already knows how to
split users over worker processes and machines and to steer them from a master; corolab adds its own
request, timing and report (:mod:`corolab.bench.locust_users`, the locustfile every process loads).

This module starts the processes, watches them and reads the master's JSON back into a
:class:`~corolab.bench.runner.BenchResult`; it never imports locust (Locust patches the standard library
for gevent when it is imported, which an asyncio program must not have), so it only asks whether locust
is installed. On other machines the same locustfile runs under the ``locust`` command: see the book's
chapter "Many load generators" for the commands.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import fields
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from .config import BenchConfig
from .records import RequestRecord
from .runner import BenchResult, RunResult

INSTALL_HINT = "pip install 'corolab[locust]'"
HOST = "127.0.0.1"
WORKERS_CONNECT_WITHIN = 60  # seconds the master waits for its workers before it gives up
WORKERS_EXIT_WITHIN = 15  # seconds a worker gets to exit after the master ended the test
REACH_TIMEOUT = 5.0  # seconds to open a TCP connection to the server before the run


class LocustError(RuntimeError):
    """A run that could not happen or did not end; the message says why (with the process's log)."""


class LocustMissing(LocustError):
    """Locust is not installed."""


class ServerUnreachable(LocustError):
    """Nothing accepts connections at the endpoint."""


def require_locust() -> None:
    """Refuse early, without importing it, when locust is not installed."""
    try:
        found = importlib.util.find_spec("locust") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise LocustMissing(f"--locust-workers needs Locust, which is not installed: {INSTALL_HINT}")


def locustfile() -> str:
    """The path of the locustfile, found without importing it (importing it imports locust)."""
    spec = importlib.util.find_spec("corolab.bench.locust_users")
    assert spec is not None and spec.origin is not None
    return spec.origin


def check_reachable(config: BenchConfig) -> None:
    """A TCP connection to the endpoint's host and port, so a stopped server is one clear error, not a
    run of connection failures spread over several processes."""
    parts = urlsplit(config.endpoint())
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=REACH_TIMEOUT):
            pass
    except OSError as exc:
        raise ServerUnreachable(f"cannot reach the server at {config.endpoint()}: {exc}") from None


def check_shape(config: BenchConfig, workers: int) -> int:
    """The load Locust can run: one closed-loop level of at least one user per worker. Returns the users."""
    config.check()
    if workers < 1:
        raise ValueError("--locust-workers must be at least 1")
    if config.mode == "ws":
        raise ValueError("--locust-workers sends HTTP requests: use --mode stream or nonstream")
    levels = config.levels()
    if config.rate is not None or len(levels) != 1:
        raise ValueError("--locust-workers runs one closed loop: give one --concurrency, not --rate or a sweep")
    users = int(levels[0][1])
    if users < workers:
        raise ValueError(f"--concurrency {users} is fewer users than --locust-workers {workers}: "
                         "each worker needs at least one user")
    return users


def config_json(config: BenchConfig) -> str:
    """The BenchConfig fields a worker needs, as JSON; the API key travels in the environment instead
    (a command line is visible to every user of the machine in ``ps``)."""
    skip = {"clock", "sleep", "api_key", "transport"}
    values = {f.name: getattr(config, f.name) for f in fields(BenchConfig) if f.name not in skip}
    if values["concurrency"] is not None and not isinstance(values["concurrency"], int):
        values["concurrency"] = list(values["concurrency"])
    return json.dumps(values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def master_command(config: BenchConfig, workers: int, users: int, port: int, json_path: Path) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", locustfile(), "--master", "--headless",
           "--master-bind-host", HOST, "--master-bind-port", str(port),
           "--expect-workers", str(workers), "--expect-workers-max-wait", str(WORKERS_CONNECT_WITHIN),
           "-u", str(users), "-r", str(users), "--only-summary",
           "--corolab-config", config_json(config), "--corolab-json", str(json_path)]
    if config.duration is not None:  # a safety net: the workers stop starting requests at the duration
        cmd += ["--run-time", f"{int(config.duration + config.timeout) + 30}s"]
    return cmd


def worker_command(port: int, master_host: str = HOST) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", locustfile(), "--worker",
            "--master-host", master_host, "--master-port", str(port)]


def record_from_row(row: dict) -> RequestRecord:
    """A record from corolab's JSON report (its durations are recomputed from the timestamps)."""
    return RequestRecord(**{f.name: row[f.name] for f in fields(RequestRecord) if f.name in row})


def read_result(path: str | Path) -> BenchResult:
    """The inverse of ``BenchResult.to_json``: the runs with their records, for notebooks and tests."""
    data = json.loads(Path(path).read_text())
    runs = []
    for run in data["runs"]:
        records = [record_from_row(row) for row in run.get("records", [])]
        kept = {f.name: run[f.name] for f in fields(RunResult) if f.name in run and f.name != "records"}
        runs.append(RunResult(records=records, **kept))
    return BenchResult(data["config"], runs)


def _pump(stream, out: TextIO) -> None:
    """Copy the master's output (progress bar and report) as it comes, into whatever ``out`` is: a
    terminal, pytest's capture or a notebook cell."""
    decode = codecs.getincrementaldecoder("utf-8")("replace")
    while chunk := os.read(stream.fileno(), 4096):
        out.write(decode.decode(chunk))
        out.flush()


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


def run_locust(config: BenchConfig, workers: int, *, json_path: str | Path | None = None,
               out: TextIO | None = None) -> BenchResult:
    """Run ``config`` as one Locust master and ``workers`` worker processes on 127.0.0.1.

    The master prints corolab's report (into ``out``, standard output by default) and writes it as JSON
    (``json_path``, or a temporary file); the result read back from it is returned, every record tagged
    with the worker that sent it. Raises :class:`LocustMissing`, :class:`ServerUnreachable`, ``ValueError``
    for a load Locust cannot run here, or :class:`LocustError` when a process fails.
    """
    users = check_shape(config, workers)
    require_locust()
    check_reachable(config)
    out = out if out is not None else sys.stdout
    with tempfile.TemporaryDirectory(prefix="corolab-locust-") as tmp:
        logs = Path(tmp)
        result_path = Path(json_path) if json_path is not None else logs / "result.json"
        result_path.unlink(missing_ok=True)
        env = os.environ | ({"OPENAI_API_KEY": config.api_key} if config.api_key else {})
        port = free_port()
        print(f"corolab bench: Locust master on {HOST}:{port}, {workers} worker processes, {users} users "
              f"-> {config.endpoint()}", file=out, flush=True)
        procs: list[subprocess.Popen] = []
        finished = False
        try:
            with open(logs / "master.log", "wb") as log:
                master = subprocess.Popen(master_command(config, workers, users, port, result_path),
                                          stdout=subprocess.PIPE, stderr=log, env=env)
            procs.append(master)
            pump = threading.Thread(target=_pump, args=(master.stdout, out), daemon=True)
            pump.start()
            for i in range(workers):
                with open(logs / f"worker{i}.log", "wb") as log:
                    procs.append(subprocess.Popen(worker_command(port), stdout=log, stderr=subprocess.STDOUT,
                                                  env=env))
            _wait(master, procs[1:], result_path, logs)
            pump.join()
            if not result_path.exists():
                raise LocustError(f"the Locust master exited with code {master.returncode} and no result:\n"
                                  + _tail(logs / "master.log"))
            finished = True
        except KeyboardInterrupt:
            if procs:
                procs[0].send_signal(signal.SIGINT)  # the master writes what it has, marked interrupted
                try:
                    procs[0].wait(WORKERS_EXIT_WITHIN)
                except subprocess.TimeoutExpired:
                    pass
            if not result_path.exists():
                raise
        finally:
            _end_all(procs, grace=WORKERS_EXIT_WITHIN if finished else 0)
        return read_result(result_path)


def _wait(master: subprocess.Popen, workers: list[subprocess.Popen], result_path: Path, logs: Path) -> None:
    """Wait for the master; a worker that exits before the master has written the result is a failure."""
    while master.poll() is None:
        for i, worker in enumerate(workers):
            if worker.poll() is not None and not result_path.exists():
                raise LocustError(f"Locust worker {i} exited with code {worker.returncode} before the run "
                                  f"ended:\n{_tail(logs / f'worker{i}.log')}")
        try:
            master.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass


def _end_all(procs: list[subprocess.Popen], grace: float) -> None:
    """Workers leave by themselves when the master quits; any still running after ``grace`` seconds (none
    after a failure) is stopped."""
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
