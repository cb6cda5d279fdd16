"""Start ``corolab serve`` as a subprocess from a notebook, wait until it is ready, and always stop it.

Why a subprocess and not a thread: the server needs its own event loop and its own CPU time, the naive
engine blocks its loop on purpose, and a notebook kernel must survive whatever the server does. Cleanup
is layered so no server outlives its notebook: ``with``/``async with`` stop it; an ``atexit`` hook stops
it when the kernel shuts down; and the server watches its parent process and exits when the kernel is
killed outright.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

# Strong references on purpose: a server whose object the notebook dropped must still be stopped at exit.
_live: set[BackgroundServer] = set()


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


class BackgroundServer:
    """``with BackgroundServer(model="fake") as server: httpx.get(server.url + "/health")``."""

    def __init__(self, model: str | None = "fake", engine: str = "batched", port: int | None = None,
                 args: Sequence[str] = (), startup_timeout: float = 180.0) -> None:
        self.model, self.engine, self.args = model, engine, list(args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None  # the server's output while it runs; removed by stop()

    # -- life cycle --------------------------------------------------------------------------------------

    def start(self) -> BackgroundServer:
        if self.running:
            return self
        self.stop()  # a server that died earlier: reap it and drop its log before starting afresh
        if port_in_use(self.port):  # else /health might answer from another server on that port
            raise ServerStartError(f"port {self.port} on 127.0.0.1 is already in use (another server still running?)")
        cmd = [sys.executable, "-m", "corolab.cli", "serve", "--engine", self.engine, "--port", str(self.port),
               "--exit-with-parent", str(os.getpid()), "--log-level", "warning", *self.args]
        if self.model is not None:
            cmd += ["--model", self.model]
        with tempfile.NamedTemporaryFile(prefix="corolab-server-", suffix=".log", delete=False) as log:
            self.log_path = Path(log.name)
            # a session of its own: stop() can kill the whole group, and Ctrl-C in the notebook does not reach it
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        _live.add(self)
        return self

    def wait_ready(self) -> None:
        """Return once ``/health`` says 200. If the server dies or takes too long, stop it and raise an
        error that ends with its log, so the notebook shows why."""
        if self.process is None:
            raise ServerStartError("the server is not started; call start() first")
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if (code := self.process.poll()) is not None:
                problem = f"the server exited with code {code}"
                break
            if time.monotonic() > deadline:
                problem = f"the server was not ready after {self.startup_timeout:g} s"
                break
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # polling an external process: there is nothing to wait on but time
        tail = self.log_tail()
        self.stop()
        raise ServerStartError(f"{problem}; its log ends with:\n{tail}")

    async def wait_ready_async(self) -> None:
        await asyncio.to_thread(self.wait_ready)

    def stop(self) -> None:
        """Stop the server and everything it started; wait until the port is free."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.process = None
        _live.discard(self)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return "(no log: the server is not running)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- context managers --------------------------------------------------------------------------------

    def __enter__(self) -> BackgroundServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:  # KeyboardInterrupt while waiting too
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> BackgroundServer:
        self.start()
        try:
            await self.wait_ready_async()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<BackgroundServer {self.url} model={self.model or 'embedded'} engine={self.engine} {state}>"


def background_server(model: str | None = "fake", engine: str = "batched", **kwargs: object) -> BackgroundServer:
    """Start a server and return it, ready; call ``.stop()`` (or use it in ``with``) when done."""
    server = BackgroundServer(model, engine, **kwargs)  # type: ignore[arg-type]
    return server.__enter__()


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        server.stop()
