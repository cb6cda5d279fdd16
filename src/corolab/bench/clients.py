"""One request each: OpenAI SSE streaming, OpenAI non-streaming, and corolab's chat websocket.

Each client turns a :class:`~corolab.bench.dataset.Prompt` into a
:class:`~corolab.bench.records.RequestRecord`, never raising for a failed request: failures are data in a
load test. Only cancellation propagates, so an interrupted run stops at once.
"""

from __future__ import annotations

import asyncio
import json

from .config import BenchConfig
from .dataset import Prompt
from .http import BrokenStream, ConnectError, HttpPool
from .records import BROKEN_STREAM, CONNECT, TIMEOUT, RequestRecord, http_error

STREAM_ERROR = "stream_error"  # the server sent an error object inside a 200 stream


def chat_body(config: BenchConfig, prompt: Prompt, *, stream: bool) -> dict:
    body = {
        "model": config.model,
        "messages": prompt.messages(),
        "max_tokens": prompt.max_tokens,
        "temperature": config.temperature,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if config.ignore_eos:
        body["ignore_eos"] = True
    body.update(config.extra_body)
    return body


def request_headers(config: BenchConfig, *, stream: bool) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
    if key := config.resolved_api_key():
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _chunk_text(obj: dict) -> str:
    choices = obj.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta") or choice.get("message") or {}
    return delta.get("content") or choice.get("text") or ""


class HttpChatClient:
    """``/v1/chat/completions``, streamed (SSE) or not, over :class:`HttpPool` or httpx."""

    def __init__(self, config: BenchConfig, pool_size: int):
        self.config = config
        self.stream = config.mode == "stream"
        self.headers = request_headers(config, stream=self.stream)
        if config.transport == "httpx":
            from .httpx_pool import HttpxPool

            self.pool = HttpxPool(config.endpoint(), pool_size)
        else:
            self.pool = HttpPool(config.endpoint(), pool_size)

    async def request(self, index: int, prompt: Prompt) -> RequestRecord:
        clock = self.config.clock
        body = json.dumps(chat_body(self.config, prompt, stream=self.stream)).encode()
        rec = RequestRecord(index=index, start=clock())
        response = None
        try:
            async with asyncio.timeout(self.config.timeout):
                response = await self.pool.post(body, self.headers)
                try:
                    if response.status != 200:
                        detail = (await response.read())[:200].decode("utf-8", "replace")
                        rec.fail(http_error(response.status), detail)
                    elif self.stream:
                        await self._read_sse(response, rec)
                    else:
                        raw = await response.read()
                        read_json_reply(raw, rec, clock())
                finally:
                    await response.aclose()
        except TimeoutError:
            rec.fail(TIMEOUT, f"no complete reply within {self.config.timeout}s")
        except ConnectError as exc:
            rec.fail(CONNECT, str(exc))
        except (BrokenStream, ValueError, KeyError, TypeError, AttributeError) as exc:
            rec.fail(BROKEN_STREAM, f"{type(exc).__name__}: {exc}")
        except OSError as exc:  # httpx and the OS raise their own shapes of the same failures
            rec.fail(CONNECT if response is None else BROKEN_STREAM, str(exc))
        return rec

    async def _read_sse(self, response, rec: RequestRecord) -> None:
        reader = SseReader(rec, self.config.clock)
        async for data in response.iter_bytes():
            if reader.feed(data):
                return
        reader.close()

    async def aclose(self) -> None:
        await self.pool.aclose()


def _event_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the first SSE event in ``buffer`` ends: (end of event, start of the rest)."""
    found = [(i, i + len(sep)) for sep in (b"\n\n", b"\r\n\r\n") if (i := buffer.find(sep)) >= 0]
    return min(found) if found else None


def read_json_reply(raw: bytes, rec: RequestRecord, t: float) -> None:
    """A whole (non-streamed) reply, read at ``t``: its text, its usage, and the record's end."""
    obj = json.loads(raw)
    rec.add_content(t, _chunk_text(obj))
    rec.set_usage(obj.get("usage"))
    rec.finish(t)


class SseReader:
    """What an SSE stream means for a record, fed the body's bytes as they arrive.

    The one place that decides when an event is timed (once per event that carries data), what counts
    as content, and how a stream must end; the asyncio client and the load generator that runs under
    Locust (``sync_client``) both feed it, so their TTFT, ITL and TPOT mean the same thing.
    """

    def __init__(self, rec: RequestRecord, clock) -> None:
        self.rec, self.clock = rec, clock
        self.buffer = b""
        self.finished = self.done = False

    def feed(self, data: bytes) -> bool:
        """Take the next bytes of the body; True when the server reported an error (stop reading)."""
        self.buffer += data
        rec = self.rec
        while (cut := _event_end(self.buffer)) is not None:
            event, self.buffer = self.buffer[: cut[0]], self.buffer[cut[1] :]
            payload = b"\n".join(line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:"))
            if not payload:
                continue  # comments and keep-alives carry no data
            t = self.clock()
            rec.end = t
            if payload == b"[DONE]":
                self.done = True
                continue
            obj = json.loads(payload)
            if "error" in obj and not obj.get("choices"):
                err = obj["error"]
                rec.fail(STREAM_ERROR, str(err.get("message", err) if isinstance(err, dict) else err))
                return True
            rec.add_content(t, _chunk_text(obj))
            rec.set_usage(obj.get("usage"))
            if any(c.get("finish_reason") for c in obj.get("choices") or ()):
                self.finished = True
        return False

    def close(self) -> None:
        """The body ended: finish the record, or raise BrokenStream if the stream never said it was done."""
        if not (self.done or self.finished):
            raise BrokenStream("stream ended without [DONE] or a finish_reason")
        self.rec.finish(self.rec.end if self.rec.end is not None else self.clock())


class WsChatClient:
    """corolab's ``/ws/chat``: send ``{query, history, max_tokens}``, receive frames until the final one.

    corolab sends ``{"type": "delta", "delta", "response"}`` frames, then ``{"type": "final", "response",
    "history", "finish_reason", "usage"}``, or ``{"type": "error", "error": {...}}`` (see
    ``corolab.serving.protocol``).
    The frame format is read tolerantly so the tester also fits similar chat sockets: text comes from a
    growing ``response`` (cumulative) or from ``delta``/``text``/``content`` (incremental); the last frame
    says so with ``done``/``final``/``finished``, a ``finish_reason``, or ``type`` of final/done/end.
    Connections are kept and reused between requests, like a chat page that stays open.
    """

    def __init__(self, config: BenchConfig, pool_size: int):
        self.config = config
        self.url = config.endpoint()
        self.size = pool_size
        self._idle: list = []
        key = config.resolved_api_key()
        self._headers = {"Authorization": f"Bearer {key}"} if key else None

    async def _connect(self):
        from websockets.asyncio.client import connect

        try:
            return await connect(self.url, additional_headers=self._headers, max_size=None)
        except OSError as exc:
            raise ConnectError(str(exc)) from exc

    async def request(self, index: int, prompt: Prompt) -> RequestRecord:
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        clock = self.config.clock
        frame = {"query": prompt.text, "history": [list(turn) for turn in prompt.history],
                 "max_tokens": prompt.max_tokens, "temperature": self.config.temperature}
        frame.update(self.config.extra_body)
        rec = RequestRecord(index=index, start=clock())
        ws = None
        try:
            async with asyncio.timeout(self.config.timeout):
                ws, raw = await self._send(json.dumps(frame))
                seen = ""
                while True:
                    if raw is None:
                        raw = await ws.recv()
                    t = clock()
                    rec.end = t
                    seen, final = self._frame(raw, seen, rec, t)
                    raw = None
                    if rec.error or final:
                        break
                rec.finish(t)
        except TimeoutError:
            rec.fail(TIMEOUT, f"no complete reply within {self.config.timeout}s")
        except ConnectError as exc:
            rec.fail(CONNECT, str(exc))
        except InvalidStatus as exc:
            rec.fail(http_error(exc.response.status_code), str(exc))
        except (ConnectionClosed, ValueError, TypeError, AttributeError) as exc:
            rec.fail(BROKEN_STREAM, f"{type(exc).__name__}: {exc}")
        finally:
            if ws is not None:
                if rec.ok and len(self._idle) < self.size and ws.state.name == "OPEN":
                    self._idle.append(ws)
                else:
                    await _close_quietly(ws)
        return rec

    async def _send(self, text: str):
        """Send on a kept connection, or a new one; return it with the first frame of the reply.

        A kept connection the server has closed since (some chat sockets close after each answer) fails
        before any reply; that attempt is retried on a fresh connection."""
        from websockets.exceptions import ConnectionClosed

        while True:
            reused = bool(self._idle)
            ws = self._idle.pop() if reused else await self._connect()
            try:
                await ws.send(text)
                return ws, await ws.recv()
            except ConnectionClosed:
                await _close_quietly(ws)
                if not reused:
                    raise

    @staticmethod
    def _frame(raw, seen: str, rec: RequestRecord, t: float) -> tuple[str, bool]:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = {"delta": raw if isinstance(raw, str) else raw.decode("utf-8", "replace")}
        if not isinstance(obj, dict):
            raise ValueError(f"unexpected frame {raw!r:.60}")
        if obj.get("error"):
            err = obj["error"]
            rec.fail(STREAM_ERROR, str(err.get("message", err) if isinstance(err, dict) else err))
            return seen, True
        if isinstance(obj.get("response"), str):
            full = obj["response"]
            new = full[len(seen) :] if full.startswith(seen) else full
            seen = full
        else:
            new = next((obj[k] for k in ("delta", "text", "content") if isinstance(obj.get(k), str)), "")
            seen += new
        rec.add_content(t, new)
        rec.set_usage(obj.get("usage"))
        final = bool(
            obj.get("done") or obj.get("final") or obj.get("finished") or obj.get("finish_reason")
            or obj.get("type") in ("final", "done", "end", "finish")
        )
        return seen, final

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for ws in idle:
            await _close_quietly(ws)


async def _close_quietly(ws) -> None:
    try:
        await asyncio.wait_for(ws.close(), 1.0)
    except (Exception, asyncio.CancelledError):  # closing a socket must not hide the real outcome
        pass


def make_client(config: BenchConfig, pool_size: int) -> HttpChatClient | WsChatClient:
    return WsChatClient(config, pool_size) if config.mode == "ws" else HttpChatClient(config, pool_size)
