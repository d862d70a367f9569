"""A loopback TCP proxy that simulates a backend outage without touching the backend.

Point a service at ``proxy.port`` instead of the real port (PostgreSQL, say): ``cut()`` drops every
open connection and refuses new ones, ``start()`` brings the "backend" back on the same port, and
``kill_on`` drops the connection carrying a given byte string before it is forwarded (a
``COMMIT`` lost on the wire). ``sent`` keeps what clients sent upstream when ``record`` is set
(what a service really puts on the wire). It runs on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.kill_on: bytes | None = None
        self.connections = 0
        self.record = False
        self.sent = bytearray()

    @property
    def up(self) -> bool:
        return self.server is not None

    async def start(self) -> None:
        """Listen (again) on ``port``; the first start picks a free port."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Drop every connection and stop listening: the backend looks gone."""
        if self.server is None:
            return
        self.server.close()
        # Drop first: since Python 3.12, wait_closed() waits for open connections to end.
        self._drop()
        await self.server.wait_closed()
        self.server = None

    async def close(self) -> None:
        await self.cut()

    def _drop(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        server = self.server
        self.writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        if self.server is not server or writer not in self.writers:
            # cut while connecting upstream: this connection must not outlive the outage
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self.writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       watch: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if watch and self.kill_on and self.kill_on in data:
                        self._drop()  # the marked bytes never reach the backend
                        return
                    if watch and self.record:
                        self.sent += data
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
