"""A loopback TCP proxy that simulates a backend outage without touching the backend.

Point a service at ``proxy.port`` instead of the real port (PostgreSQL, say): ``cut()`` drops every
open connection and refuses new ones, ``start()`` brings the "backend" back on the same port, and
``kill_on`` drops the connection carrying a given byte string before it is forwarded (a
``COMMIT`` lost on the wire). ``sent`` keeps what clients sent upstream when ``record`` is set
(what a service really puts on the wire). With ``count_http`` set it also counts the HTTP/1.1
requests it carries per path (``requests``), how many of each are in flight (sent, no answer
begun yet) and the most ever in flight at once (``peak``): what a service really asks of the
backend behind it. It runs on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter

__all__ = ["TcpProxy"]

_REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+?)(?:\?\S*)? HTTP/1\.[01]\r\n")


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
        self.count_http = False
        self.requests: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

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
        # The path of this connection's request awaiting its answer (HTTP/1.1: one at a time).
        asked: list[str] = []

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       watch: bool) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if watch and self.kill_on and self.kill_on in data:
                        self._drop()  # the marked bytes never reach the backend
                        return
                    if watch and self.record:
                        self.sent += data
                    if self.count_http:
                        self._count(asked, data, watch)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        finally:
            if asked:
                self.in_flight[asked.pop()] -= 1

    def _count(self, asked: list[str], data: bytes, request: bool) -> None:
        """A request begins (a request line while none is awaiting) or its answer begins."""
        if request and not asked:
            line = _REQUEST_LINE.match(data)
            if line is not None:
                path = line.group(2).decode("latin-1")
                asked.append(path)
                self.requests[path] += 1
                self.in_flight[path] += 1
                self.peak[path] = max(self.peak[path], self.in_flight[path])
        elif not request and asked:
            self.in_flight[asked.pop()] -= 1
