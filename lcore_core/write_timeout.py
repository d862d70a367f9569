"""Ending responses whose client stops reading (`service.write_timeout_seconds`).

An ASGI wrapper around `send`: bodies go out in pieces of at most `PIECE` bytes, and a write
that waits longer than the timeout ends the response. Hypercorn's `send` waits for the socket
buffer to drain (`StreamWriter.drain`), so a reader that stopped holds the write, and with it a
stream's Llama Stack call and quota reservation, for as long as it likes.

Ending means what a client that goes away gets: the connection is aborted (Hypercorn's
transport, when the server is Hypercorn) and the handler task is cancelled, so a stream's
clean-up (closing the Llama Stack call, giving back the quota reservation) runs as on a
disconnect. One timer per response, armed while a write is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog

log = structlog.get_logger("lcore.write_timeout")

PIECE = 64 * 1024  # bytes per write: bounds what a stalled client leaves buffered

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


def with_write_timeout(asgi_app: Any, seconds: float, on_timeout: Callable[[], None]) -> Any:
    """`asgi_app` with its HTTP responses ended when a write blocks longer than `seconds`;
    `on_timeout()` runs once for each response ended so (the metric)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await asgi_app(scope, receive, send)
            return
        watch = _Watch(seconds, send, scope, on_timeout)
        await asgi_app(scope, receive, watch.send)

    return app


class _Watch:
    """One response's writes and the timer that ends it."""

    def __init__(self, seconds: float, send: Send, scope: Scope,
                 on_timeout: Callable[[], None]) -> None:
        self.seconds = seconds
        self.inner = send
        self.scope = scope
        self.on_timeout = on_timeout
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.writer: asyncio.Task[Any] | None = None  # the task whose write is pending
        self.deadline = 0.0
        self.expired = False

    async def send(self, message: Message) -> None:
        if self.expired:
            raise asyncio.CancelledError  # the response was ended: nothing more goes out
        body = message.get("body") or b""
        if message.get("type") != "http.response.body" or len(body) <= PIECE:
            await self._write(message)
            return
        more = bool(message.get("more_body", False))
        view = memoryview(body)
        for start in range(0, len(body), PIECE):
            last = start + PIECE >= len(body)
            await self._write({"type": "http.response.body",
                               "body": bytes(view[start:start + PIECE]),
                               "more_body": more if last else True})

    async def _write(self, message: Message) -> None:
        self.writer = asyncio.current_task()
        self.deadline = self.loop.time() + self.seconds
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._check)
        try:
            await self.inner(message)
        finally:
            self.writer = None

    def _check(self) -> None:
        """The timer: reschedule while writes make progress, end the response when one is
        still pending at its deadline."""
        self.timer = None
        writer = self.writer
        if writer is None:
            return  # no write pending; the next one arms the timer again
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._check)
            return
        self.expired = True
        self.on_timeout()
        log.warning("response write timed out", path=self.scope.get("path"),
                    client=_client(self.scope), timeout_seconds=self.seconds)
        _abort(self.inner)
        writer.cancel()


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


def _reset(transport: Any) -> None:
    """Abort with a TCP reset: with linger off, closing drops what the kernel still holds for
    the client (megabytes on loopback) instead of trickling it out before the FIN, so the
    client learns at once that the response ended."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _abort(send: Any) -> None:
    """Abort the connection under Hypercorn's `send` (HTTP/1.1 and HTTP/2: the stream's `send`
    leads through the protocol to the TCP server's writer). Without one found, cancelling the
    handler is all: the server then closes the connection as for any unfinished response."""
    hop: Any = send
    for _ in range(4):
        owner = getattr(hop, "__self__", None)
        if owner is None:
            return
        transport = getattr(getattr(owner, "writer", None), "transport", None)
        if transport is not None:
            _reset(transport)
            return
        hop = getattr(owner, "send", None)
