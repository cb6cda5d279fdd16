"""An instant OpenAI-compatible chat server on raw asyncio streams, for measuring the tester itself.

It does no work per token, so a load test against it measures the client's ceiling (plus this server's
small cost when both share one process). Its replies are scriptable: tests pass a ``handler`` that
decides, per request, what to stream and when, which is how the tests assert exact metrics.

Run it alone with ``python -m corolab.bench.fakeserver --port 8001``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable


class Reply:
    """What a handler writes to: a JSON body, or an SSE stream in HTTP/1.1 chunked encoding."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.started = False
        self.close_after = False

    def json(self, obj: dict, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error"}.get(status, "Status")
        self.writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body
        )
        self.started = True

    def start_stream(self) -> None:
        self.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.started = True

    def event(self, obj: dict | str) -> None:
        """One SSE event, sent as one HTTP chunk."""
        data = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
        payload = b"data: " + data + b"\n\n"
        self.writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))

    def end_stream(self) -> None:
        self.writer.write(b"0\r\n\r\n")

    def abort(self) -> None:
        """Drop the connection mid-reply: a broken stream as the client sees it."""
        self.close_after = True

    async def flush(self) -> None:
        await self.writer.drain()


Handler = Callable[[dict, Reply], Awaitable[None]]


def chunk(text: str | None = None, *, finish: str | None = None, usage: dict | None = None,
          model: str = "fake") -> dict:
    """An OpenAI ``chat.completion.chunk``."""
    choices = [] if usage else [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]
    out = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": choices}
    if usage:
        out["usage"] = usage
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def instant_reply(request: dict, reply: Reply) -> None:
    """``max_tokens`` one-word tokens, all at once; usage when asked for, as OpenAI does."""
    n = int(request.get("max_tokens") or 16)
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", ()))
    words = [f"w{i} " for i in range(n)]
    if not request.get("stream"):
        reply.json({"id": "chatcmpl-fake", "object": "chat.completion", "model": request.get("model", "fake"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                                 "finish_reason": "length"}],
                    "usage": usage(prompt_tokens, n)})
        return
    reply.start_stream()
    for i, word in enumerate(words):
        reply.event(chunk(word, finish="length" if i == n - 1 else None))
    if (request.get("stream_options") or {}).get("include_usage"):
        reply.event(chunk(usage=usage(prompt_tokens, n)))
    reply.event("[DONE]")
    reply.end_stream()


class FakeChatServer:
    """``async with FakeChatServer() as server: server.url`` → an endpoint on 127.0.0.1 (a free port).

    ``in_flight``/``peak`` count requests between arrival and the end of their reply: the tests use the
    peak to prove a closed loop holds exactly C requests in flight.
    """

    def __init__(self, handler: Handler = instant_reply, host: str = "127.0.0.1", port: int = 0):
        self.handler, self.host, self.port = handler, host, port
        self.in_flight = self.peak = self.served = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FakeChatServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeChatServer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                reply = Reply(writer)
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                try:
                    await self.handler(json.loads(body or b"{}"), reply)
                    await reply.flush()
                finally:
                    self.in_flight -= 1
                self.served += 1
                if reply.close_after:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # stop() ends idle keep-alive connections this way; nothing to report
        finally:
            self._tasks.discard(task)
            writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="an instant fake OpenAI chat server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)

    async def serve() -> None:
        server = await FakeChatServer(host=args.host, port=args.port).start()
        print(f"fake chat server on {server.url}", flush=True)
        await server._server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
