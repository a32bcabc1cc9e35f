"""A TCP proxy the tests can switch between forwarding and black-holing.

Killing a server gives fast "connection refused" errors; a network that silently drops
packets gives none, and every client waits for its own timeout. While `blackhole` is on,
the proxy accepts connections and reads what arrives but forwards nothing either way, also
on connections that were open before. It runs its own event loop in a thread, so clients
that block (worker threads, other processes) and async tests can use it alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        """Stop forwarding in both directions; connections stay open and silent."""
        self._flowing.clear()

    def restore(self) -> None:
        """Forward again; connections opened before are cut, as a network partition's are."""
        asyncio.run_coroutine_threadsafe(self._cut_all(), self._loop).result(5)
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        self._writers.add(writer)
        try:
            if not self._flowing.is_set():
                await _drain_forever(reader)
                return
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for each in (writer, up_writer):
            each.close()
            self._writers.discard(each)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self._flowing.is_set():
                continue  # dropped, like packets into a black hole
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _close(self) -> None:
        await self._cut_all()
        if self._server is not None:
            self._server.close()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)


async def _drain_forever(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass
