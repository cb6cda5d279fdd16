"""Lab 6: a chat server on asyncio streams. Run `corolab lab check 6` to see your score.

The skeleton below starts, welcomes a client, and ignores everything it says. Read the README's rules,
then fill in the TODOs. Try it by hand with `python chat.py` and `nc 127.0.0.1 8888` in two terminals.
"""

from __future__ import annotations

import asyncio


class ChatServer:
    """A line-based chat room: every client picks a name, then each line it sends goes to everyone else."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._clients: dict[str, asyncio.StreamWriter] = {}   # named clients, by name

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
        # TODO: close every client's connection and wait for the handlers to finish.
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = (await reader.readline()).decode(errors="replace").strip()
        # TODO: refuse bad names ("error bad name") and names in use ("error name taken").
        self._clients[name] = writer
        writer.write(f"welcome {name}\n".encode())
        # TODO: tell the others "* NAME joined".
        while line := await reader.readline():
            text = line.decode(errors="replace").strip()
            # TODO: /quit, /who, and "NAME: text" to everyone else.
        # TODO: on the way out, whatever the reason: forget the name, tell the others "* NAME left".


async def main(port: int = 8888) -> None:
    """Run the server until Ctrl-C."""
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
