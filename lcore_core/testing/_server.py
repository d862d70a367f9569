"""Serve an ASGI app with Hypercorn from a daemon thread with its own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

AppFactory = Callable[[], Any]


class ThreadedASGIServer:
    """One ASGI app on ``host:port`` (0 picks a free port), served until ``stop()``."""

    def __init__(self, app_factory: AppFactory, *, host: str = "127.0.0.1", port: int = 0,
                 name: str = "asgi") -> None:
        self.app_factory = app_factory
        self.host = host
        self.port = port
        self.name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind, start the thread and return once the socket listens."""
        if self._thread is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        # binding here, not in hypercorn, makes the port known (and taken) before start() returns
        self.port = sock.getsockname()[1]
        self._started.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"{self.name}:{self.port}", daemon=True
        )
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"{self.name} server did not start within 10 s")
        if self._error is not None:
            self._thread = None
            raise RuntimeError(f"{self.name} server failed to start") from self._error

    def stop(self) -> None:
        """Shut down gracefully and join the thread."""
        if self._thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            # the loop may close between the check and the call
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        self._thread.join(10)
        self._thread = None

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(sock))
        except BaseException as exc:  # reported to start(); a dead thread must not hang it
            self._error = exc
            self._started.set()
        finally:
            # background tasks (sse-starlette's shutdown watcher) would warn when destroyed
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None

    async def _serve(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        config = HypercornConfig()
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1.0
        app = self.app_factory()
        self._started.set()
        await serve(app, config, shutdown_trigger=self._stopping.wait)
