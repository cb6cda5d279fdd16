"""Serve an ASGI app with uvicorn in a thread of this process, on a free port of 127.0.0.1.

Why a thread and not :mod:`corolab.background`'s subprocess: the chapters on FastAPI serve small apps
defined in a notebook cell, and want to look inside them while they run (a counter, a thread name). A
thread shares the process; its own event loop keeps the server apart from the notebook's loop, so a
route that blocks freezes the server and not the client that measures it.

>>> from fastapi import FastAPI
>>> import httpx
>>> with served(FastAPI()) as url:
...     httpx.get(url + "/openapi.json").status_code
200
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn


@contextlib.contextmanager
def served(app: Any, startup_timeout: float = 30.0, **config: Any) -> Iterator[str]:
    """Run ``app`` until the block ends; yield its base URL, ``http://127.0.0.1:PORT``.

    The socket is bound here, before the thread starts, so the port is known and nobody can take it in
    between. Leaving the block sets ``should_exit`` (uvicorn's own graceful stop) and joins the thread;
    ``timeout_graceful_shutdown`` bounds how long a stuck request can delay that.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = {"log_level": "warning", "timeout_graceful_shutdown": 2, **config}
    server = uvicorn.Server(uvicorn.Config(app, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        waited = threading.Event()
        for _ in range(int(startup_timeout / 0.01)):
            if server.started or not thread.is_alive():
                break
            waited.wait(0.01)
        if not server.started:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(startup_timeout)
        sock.close()


__all__ = ["served"]
