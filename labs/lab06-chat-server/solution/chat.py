"""Lab 6: a chat server on asyncio streams (instructor solution)."""

from __future__ import annotations

import asyncio


class ChatServer:
    """A line-based chat room: every client picks a name, then each line it sends goes to everyone else."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._clients: dict[str, asyncio.StreamWriter] = {}   # named clients, by name
        self._connections: set[asyncio.StreamWriter] = set()  # every open connection, named or not
        self._handlers: set[asyncio.Task] = set()

    @property
    def names(self) -> list[str]:
        """The names of the clients in the room, sorted."""
        return sorted(self._clients)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start listening; return the port (a free one when ``port`` is 0)."""
        self._server = await asyncio.start_server(self._serve, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop accepting, hang up on every client, and return when every handler has finished."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.close()          # each handler's readline() then sees the end and the handler returns
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._connections.add(writer)
        name = None
        try:
            name = await self._join(reader, writer)
            while name is not None and (line := await reader.readline()):
                if not line.endswith(b"\n"):       # the stream ended mid-line: not a message
                    break
                text = line.decode(errors="replace").strip()
                if not text:
                    continue
                if text == "/quit":
                    self._send(writer, "bye")
                    break
                if text == "/who":
                    self._send(writer, "users: " + ", ".join(self.names))
                    continue
                self._broadcast(f"{name}: {text}", skip=name)
        except (ConnectionError, ValueError):   # a reset connection, or a line over the stream's limit
            pass
        finally:
            if name is not None and self._clients.get(name) is writer:
                del self._clients[name]
                self._broadcast(f"* {name} left")
            writer.close()
            self._connections.discard(writer)
            self._handlers.discard(task)

    async def _join(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        """Read the client's first line as its name; return it, or None after refusing it."""
        name = (await reader.readline()).decode(errors="replace").strip()
        if not name or " " in name or name.startswith(("/", "*")):
            self._send(writer, "error bad name")
            return None
        if name in self._clients:
            self._send(writer, "error name taken")
            return None
        self._clients[name] = writer
        self._send(writer, f"welcome {name}")
        self._broadcast(f"* {name} joined", skip=name)
        return name

    def _broadcast(self, text: str, skip: str | None = None) -> None:
        for other in list(self._clients):
            if other != skip:
                self._send(self._clients[other], text)

    @staticmethod
    def _send(writer: asyncio.StreamWriter, text: str) -> None:
        # No drain(): one slow reader must not stall whoever is talking. The price is a buffer that grows
        # for a client that never reads; see the README's "going further".
        if not writer.is_closing():
            writer.write((text + "\n").encode())


async def main(port: int = 8888) -> None:
    """Run the server until Ctrl-C. Try it with `nc 127.0.0.1 8888` in two terminals."""
    server = ChatServer()
    print(f"chat server on 127.0.0.1:{await server.start(port=port)}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
