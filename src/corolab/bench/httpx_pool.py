"""The same POST interface as :class:`~corolab.bench.http.HttpPool`, on ``httpx.AsyncClient``.

Kept so the ceiling benchmark can show what the raw client buys, and for endpoints that need what only
httpx does (proxies, HTTP/2 via an installed extra).
"""

from __future__ import annotations

import httpx

from .http import BrokenStream, ConnectError


class _HttpxResponse:
    def __init__(self, cm, response: httpx.Response):
        self._cm, self._response = cm, response
        self.status = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}

    async def iter_bytes(self):
        try:
            async for data in self._response.aiter_raw():
                yield data
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise BrokenStream(str(exc)) from exc

    async def read(self) -> bytes:
        return b"".join([d async for d in self.iter_bytes()])

    async def aclose(self) -> None:
        await self._cm.__aexit__(None, None, None)


class HttpxPool:
    def __init__(self, url: str, size: int):
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self.url = url
        self.client = httpx.AsyncClient(limits=limits, timeout=None)

    async def post(self, body: bytes, headers: dict[str, str]) -> _HttpxResponse:
        cm = self.client.stream("POST", self.url, content=body, headers=headers)
        try:
            response = await cm.__aenter__()
        except httpx.ConnectError as exc:
            raise ConnectError(str(exc)) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise BrokenStream(str(exc)) from exc
        return _HttpxResponse(cm, response)

    async def aclose(self) -> None:
        await self.client.aclose()
