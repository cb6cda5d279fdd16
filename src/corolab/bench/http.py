"""A minimal HTTP/1.1 client on asyncio streams, with a keep-alive pool sized for the concurrency.

Why not httpx? It is the right tool for applications, but a load tester's own cost per request is the
ceiling of what it can measure; on a 2-core machine httpx's per-request overhead sits near the rate we
want to drive. ``benchmarks/bench_tester_ceiling.py`` measures both (``transport="httpx"`` selects it).
This client does only what an OpenAI-compatible POST needs: one request per connection at a time,
``Content-Length`` or ``chunked`` bodies, TLS through ``ssl``; no redirects, proxies or HTTP/2.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit


class ConnectError(OSError):
    """The TCP (or TLS) connection could not be opened."""


class BrokenStream(Exception):
    """The server closed the connection, or sent something that is not HTTP, mid-response."""


class Response:
    """Status, headers and a body to iterate once. ``aclose()`` returns the connection to the pool."""

    def __init__(self, pool: HttpPool, conn, status: int, headers: dict[str, str]):
        self._pool, self._conn = pool, conn
        self.status, self.headers = status, headers
        self._done = False

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        reader = self._conn[0]
        try:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = await reader.readline()
                    if not size_line.endswith(b"\n"):
                        raise BrokenStream("connection closed inside a chunked body")
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif "content-length" in self.headers:
                length = int(self.headers["content-length"])
                if length:
                    yield await reader.readexactly(length)
            else:  # body runs to EOF
                while data := await reader.read(65536):
                    yield data
                self.headers["connection"] = "close"
        except asyncio.IncompleteReadError as exc:
            raise BrokenStream("connection closed before the body ended") from exc
        except (ValueError, ConnectionError) as exc:
            raise BrokenStream(str(exc) or type(exc).__name__) from exc
        self._done = True

    async def read(self) -> bytes:
        return b"".join([part async for part in self.iter_bytes()])

    async def aclose(self) -> None:
        if self._conn is None:
            return
        keep = self._done and self.headers.get("connection", "").lower() != "close"
        self._pool._release(self._conn, keep)
        self._conn = None


class HttpPool:
    """Keep-alive connections to one origin; at most ``size`` kept idle."""

    def __init__(self, url: str, size: int = 64):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host_header = parts.netloc.split("@")[-1]
        self.size = size
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._ssl = _ssl.create_default_context() if self.https else None

    async def _connect(self):
        try:
            return await asyncio.open_connection(self.host, self.port, ssl=self._ssl, limit=1 << 20)
        except (OSError, _ssl.SSLError) as exc:
            raise ConnectError(f"{self.host}:{self.port}: {exc}") from exc

    def _release(self, conn, keep: bool) -> None:
        if keep and len(self._idle) < self.size and not conn[1].is_closing():
            self._idle.append(conn)
        else:
            conn[1].close()

    async def post(self, body: bytes, headers: dict[str, str]) -> Response:
        """Send one POST and read the status line and headers; the body is read from the Response.

        A pooled connection the server has since closed fails before any byte comes back; that attempt is
        retried once on a fresh connection, as browsers and httpx do.
        """
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host_header}\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n"
        ).encode("latin-1") + body
        while True:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            try:
                conn[1].write(head)
                status_line = await conn[0].readline()
                if not status_line:
                    raise BrokenStream("connection closed before the status line")
                parts = status_line.split(None, 2)
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                    raise BrokenStream(f"not an HTTP status line: {status_line[:60]!r}")
                status = int(parts[1])
                response_headers: dict[str, str] = {}
                while (line := await conn[0].readline()) not in (b"\r\n", b"\n"):
                    if not line:
                        raise BrokenStream("connection closed inside the headers")
                    name, _, value = line.decode("latin-1").partition(":")
                    response_headers[name.strip().lower()] = value.strip()
            except (BrokenStream, ConnectionError) as exc:
                conn[1].close()
                if reused:
                    continue
                if isinstance(exc, BrokenStream):
                    raise
                raise BrokenStream(str(exc) or type(exc).__name__) from exc
            except BaseException:
                conn[1].close()
                raise
            return Response(self, conn, status, response_headers)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
