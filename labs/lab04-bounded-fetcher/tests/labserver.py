"""A small HTTP server for Lab 4, whose paths say how to answer, and which records what it saw.

Why our own and not a mock: the fetcher under test must open real connections, hold them, time out and
cancel them; only a real server can tell from its side how many requests were in flight at once and
whether the client hung up.

Paths:
    /text/WORD            200, body WORD
    /delay/MS/WORD        waits MS milliseconds, then 200 WORD
    /status/CODE          status CODE, body "status CODE"
    /hang, /hang/WORD     never answers; notices when the client hangs up
    /gate/WORD            waits until ``gate`` requests have been in flight at once, then 200 WORD

Run it by hand to try your fetcher from a notebook or a shell:
    python labs/lab04-bounded-fetcher/tests/labserver.py      # prints its URL, Ctrl-C stops it
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}


class LabServer:
    """Serve the paths above on 127.0.0.1 and a free port; use it with ``async with``."""

    def __init__(self, gate: int = 0) -> None:
        self.gate = gate                  # how many requests /gate waits for
        self.in_flight = 0
        self.max_in_flight = 0
        self.started: list[str] = []      # paths, in the order requests arrived
        self.hangups = 0                  # /hang requests whose client went away
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first (async with LabServer() as server)"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> LabServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait (without polling) until ``condition()`` holds; the caller bounds it with a timeout."""
        async with self._changed:
            await self._changed.wait_for(condition)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request_line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass                                            # skip the headers
            parts = request_line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.started.append(path)
            await self._notify()
            try:
                status, body = await self._answer(path, reader)
            finally:
                self.in_flight -= 1
                await self._notify()
            if status:
                data = body.encode()
                head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: text/plain\r\n"
                        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
                writer.write(head.encode() + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server is shutting down; asyncio 3.11 logs a cancelled handler as an error otherwise
        finally:
            writer.close()
            self._handlers.discard(task)

    async def _answer(self, path: str, reader: asyncio.StreamReader) -> tuple[int, str]:
        match path.strip("/").split("/"):
            case ["text", word]:
                return 200, word
            case ["delay", ms, word]:
                await asyncio.sleep(int(ms) / 1000)
                return 200, word
            case ["status", code]:
                return int(code), f"status {code}"
            case ["gate", word]:
                # Latched on the maximum, so a request that finishes early cannot close the gate again.
                await self.wait_until(lambda: self.max_in_flight >= self.gate)
                return 200, word
            case ["hang"] | ["hang", _]:
                await reader.read()                             # returns only when the client hangs up
                self.hangups += 1
                await self._notify()
                return 0, ""
            case _:
                return 404, "no such path"


async def _main() -> None:
    async with LabServer(gate=2) as server:
        print(f"lab server at {server.url} (try {server.url}/delay/500/hello); Ctrl-C stops it", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(_main())
    except KeyboardInterrupt:
        pass
