"""Library mode on OGX 1.x: OGX's own server application, run in LCore's process.

OGX's library client (`ogx.core.library_client.AsyncOGXAsLibraryClient`) is built on
`ogx_client`, an OpenAPI-Generator SDK whose calls, results and errors differ from
`llama_stack_client`'s, which the rest of LCore speaks. Running OGX's ASGI application in process
instead, behind an httpx transport, keeps one client and one error mapping for both backends and
both modes: LCore talks to it exactly as to an OGX server, without a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

#: The base URL of the in-process application (never resolved: no socket is opened).
BASE_URL = "http://ogx.in-process"


class _Body(httpx.AsyncByteStream):
    """A response body read as the application sends it (a stream's events as they come)."""

    def __init__(self, chunks: asyncio.Queue[bytes | None], task: asyncio.Task[None]) -> None:
        self._chunks = chunks
        self._task = task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not None:
            yield chunk
        await self._task  # the application's own failure after its last byte

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """httpx's ASGITransport waits for the whole response; this one hands the response over at
    its start and its body chunk by chunk, so a streamed answer streams."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            # ASGI 2.4: a disconnect shows as a failing `send`, so Starlette streams in this task
            # rather than in a task group beside a disconnect listener, whose cancel scope OGX's
            # MCP sessions (held open across the stream's events) would cross.
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": request.method, "scheme": request.url.scheme,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "path": request.url.path, "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query, "root_path": "",
            "server": (request.url.host, request.url.port or 80), "client": ("127.0.0.1", 0),
        }
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = (
            asyncio.get_running_loop().create_future())
        sent, finished = False, asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    await chunks.put(message["body"])
                if not message.get("more_body", False):
                    finished.set()
                    await chunks.put(None)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                if finished.is_set():
                    # Answered already: Starlette re-raises what its error handler turned into
                    # the answer (OGX's 4xx/5xx), for a server to log. OGX printed it.
                    return
                if not started.done():
                    started.set_exception(exc)
                raise
            finally:
                finished.set()
                await chunks.put(None)

        task = asyncio.create_task(run())
        try:
            status, headers = await asyncio.shield(started)
        except BaseException:
            task.cancel()
            raise
        return httpx.Response(status, headers=headers, stream=_Body(chunks, task),
                              request=request)


class OgxInProcess:
    """OGX's application for a run configuration, started (its lifespan entered) and stopped."""

    def __init__(self, run_config_path: str) -> None:
        self.run_config_path = run_config_path
        self._lifespan: contextlib.AbstractAsyncContextManager[Any] | None = None
        self.app: Any = None

    async def start(self) -> httpx.AsyncClient:
        """Build OGX's application, initialise its providers; an HTTP client that reaches it."""
        from ogx.core.server.server import create_app

        # OGX's application factory reads its run configuration from here; its version check
        # is for remote clients.
        os.environ["OGX_CONFIG"] = self.run_config_path
        os.environ.setdefault("OGX_DISABLE_VERSION_CHECK", "1")
        app = create_app()
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        self.app, self._lifespan = app, lifespan
        return httpx.AsyncClient(transport=StreamingASGITransport(app), base_url=BASE_URL)

    async def stop(self) -> None:
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)
