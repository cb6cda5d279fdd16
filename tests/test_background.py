"""``BackgroundServer``: a real ``corolab serve`` subprocess on the fake model, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from corolab.teach.background import BackgroundServer, ServerStartError, background_server, free_port, port_in_use

# ChatGLM's example request, with max_length raised for the fake model: its tokenizer counts bytes, and
# max_length counts prompt plus reply (a Chinese character is three bytes).
SEED_REQUEST = {
    "messages": [{"role": "system", "content": "你是人工智能助手"}, {"role": "user", "content": "海贼王作者是谁"}],
    "stream": False, "model": "gpt-3.5-turbo", "temperature": 0.5, "max_length": 200, "top_p": 1,
}


def alive(pid: int) -> bool:
    """True while any thread of ``pid`` exists and is not a zombie (an orphan's zombie may wait for a lazy
    reaper). Every thread counts, not the leader alone: after ``os._exit`` the leader can turn zombie while
    a sibling thread is still exiting and still holds the process's sockets (seen once on a busy core: the
    leader was gone, the port still taken)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue  # this thread finished exiting while we looked
        if state not in ("Z", "X"):
            return True
    return False


def wait_until_gone(pid: int, timeout: float = 15.0) -> None:
    """Another process must exit on its own: poll /proc, bounded."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive after {timeout} s"
        time.sleep(0.05)


def assert_stopped(pid: int, port: int) -> None:
    assert not alive(pid)
    assert not port_in_use(port)
    with socket.socket() as s:  # the port is really free: we can listen on it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_with_block_serves_then_leaves_nothing_behind() -> None:
    with BackgroundServer(model="fake", engine="batched") as server:
        assert server.running and server.url == f"http://127.0.0.1:{server.port}"
        pid, log_path = server.process.pid, server.log_path  # type: ignore[union-attr]
        assert httpx.get(server.url + "/health").status_code == 200
        reply = httpx.post(server.url + "/v1/chat/completions", json=SEED_REQUEST, timeout=30)
        assert reply.status_code == 200
        assert "海贼王作者是谁" in reply.json()["choices"][0]["message"]["content"]
        assert "running" in repr(server)
    assert not server.running and "stopped" in repr(server)
    assert_stopped(pid, server.port)
    assert log_path is not None and not log_path.exists()


async def test_async_with_block_and_chosen_port() -> None:
    port = free_port()
    async with BackgroundServer(model="fake", engine="threads", port=port) as server:
        assert server.url.endswith(f":{port}")
        pid = server.process.pid  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=server.url) as client:
            health = await client.get("/health")
            assert health.status_code == 200 and health.json()["engine"] == "threads"
    assert_stopped(pid, port)


def test_function_form_returns_a_ready_server() -> None:
    server = background_server(model="fake", engine="naive")
    try:
        assert httpx.get(server.url + "/health").status_code == 200
        pid = server.process.pid  # type: ignore[union-attr]
    finally:
        server.stop()
    assert_stopped(pid, server.port)
    server.stop()  # stopping twice is harmless


def test_startup_failure_raises_with_the_server_log() -> None:
    server = BackgroundServer(model="fake", args=("--max-batch-size", "0"), startup_timeout=60)
    with pytest.raises(ServerStartError) as info:
        with server:
            pytest.fail("the server should not have started")
    assert "--max-batch-size must be at least 1" in str(info.value)  # the tail of the server's own log
    assert server.process is None and not port_in_use(server.port)


def test_port_in_use_is_refused_before_starting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerStartError, match="already in use"):
            with BackgroundServer(port=port):
                pass


def test_interrupt_while_waiting_stops_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in a notebook while the model loads must not leave the server running."""
    started: list[int] = []

    def interrupted(self: BackgroundServer) -> None:
        started.append(self.process.pid)  # type: ignore[union-attr]
        raise KeyboardInterrupt

    monkeypatch.setattr(BackgroundServer, "wait_ready", interrupted)
    server = BackgroundServer(model="fake")
    with pytest.raises(KeyboardInterrupt):
        with server:
            pass
    assert len(started) == 1
    assert_stopped(started[0], server.port)


KERNEL = """
import json, sys
from corolab.teach.background import background_server
server = background_server(model="fake")
print(json.dumps({"pid": server.process.pid, "port": server.port, "log": str(server.log_path)}), flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)  # a kernel shut down without stopping the server: atexit must stop it
sys.stdin.read()  # a kernel that hangs until it is killed
"""


def start_kernel(mode: str) -> tuple[subprocess.Popen[str], dict]:
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = kernel.stdout.readline()  # type: ignore[union-attr]
    assert line, "the kernel stand-in did not start its server"
    return kernel, json.loads(line)


def test_kernel_exit_without_stop_stops_the_server() -> None:
    kernel, server = start_kernel("exit")
    assert kernel.wait(timeout=30) == 0
    assert_stopped(server["pid"], server["port"])  # at once: atexit waited for it


def test_killed_kernel_leaves_no_orphan() -> None:
    """SIGKILL runs no cleanup in the kernel: the server notices its parent is gone and exits."""
    kernel, server = start_kernel("hang")
    try:
        assert alive(server["pid"])
        assert httpx.get(f"http://127.0.0.1:{server['port']}/health").status_code == 200
    finally:
        kernel.kill()
        kernel.wait(timeout=10)
    try:
        wait_until_gone(server["pid"])
    finally:
        if alive(server["pid"]):  # the test failed: do not leave the orphan behind
            os.killpg(server["pid"], signal.SIGKILL)
        Path(server["log"]).unlink(missing_ok=True)  # a killed kernel cannot remove its server's log
    assert_stopped(server["pid"], server["port"])


def test_serve_options_pass_through() -> None:
    """``args`` reach ``corolab serve``: a key and a served name, checked with the official client."""
    import openai

    with BackgroundServer(model="fake", args=("--api-key", "k", "--served-model-name", "tiny")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert "hi" in (reply.choices[0].message.content or "")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_start_then_wait_ready_cleans_up_after_a_failure() -> None:
    """The two-step form notebooks use: a failed wait_ready leaves no process and no log file behind."""
    server = BackgroundServer(model="fake", engine="batched", args=("--max-waiting", "-1")).start()
    log_path, pid = server.log_path, server.process.pid  # type: ignore[union-attr]
    with pytest.raises(ServerStartError, match="exited with code 2"):
        server.wait_ready()
    assert not server.running and server.process is None and log_path is not None and not log_path.exists()
    assert not alive(pid)
    with pytest.raises(ServerStartError, match="not started"):
        server.wait_ready()
