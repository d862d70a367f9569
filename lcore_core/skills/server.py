"""The skill tools as an MCP server on loopback, which Llama Stack calls like any MCP server.

Why a server: LCore makes one Llama Stack call per query, and within it the model can only call
tools Llama Stack itself runs (MCP servers, file_search). Serving the skill tools over MCP (the
`mcp` SDK, streamable HTTP, stateless, JSON answers) lets that one call load skills and read
their files, without a second call per tool round as a client-side agent loop would need.

Each LCore process runs its own server on 127.0.0.1 and a free port, with a random token made at
start-up: Llama Stack gets it as the MCP `authorization` and sends it as a bearer token; any
request without it is refused (401). One server per process keeps `service.workers` > 1 working
(each worker hands Llama Stack its own server and token). Llama Stack must therefore run on the
same host (library mode, or a server in the same pod or network namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

import structlog

from lcore_core.errors import ConfigError
from lcore_core.skills.catalog import Catalog
from lcore_core.skills.tools import TOOLS, ToolFailure, call

log = structlog.get_logger("lcore.skills")

#: The `server_label` of the skill tools in a Responses call (upstream's provider id).
SERVER_LABEL = "agent-skills"
PATH = "/mcp"
# MCP requests are small JSON-RPC messages; anything larger is not one of ours.
MAX_REQUEST_BYTES = 64 * 1024


class SkillsServer:
    """Started at app start-up, stopped at shutdown; `tool()` is what a query offers."""

    def __init__(self, catalog: Catalog, host: str = "127.0.0.1", port: int = 0,
                 url: str | None = None) -> None:
        self.catalog = catalog
        self.host = host
        self.port = port
        self._url = url
        self.token = secrets.token_urlsafe(32)
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The URL Llama Stack is given."""
        if self._url:
            return self._url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    def tool(self) -> dict[str, Any]:
        """The Responses-API tool entry for this server."""
        return {"type": "mcp", "server_label": SERVER_LABEL, "server_url": self.url,
                "require_approval": "never", "authorization": self.token}

    async def start(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config as HypercornConfig

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"the skills MCP server cannot listen on {self.host}:{self.port}: "
                              f"{exc.strerror or exc}", key="skills.mcp_port") from None
        # Bound here, so the port is known (and taken) before any query can offer it.
        self.port = sock.getsockname()[1]
        config = HypercornConfig()
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1.0
        manager = _session_manager(self.catalog)
        self._stop = stop = asyncio.Event()
        # The MCP path, and the path of `url` in case a proxy in front keeps it.
        app = _guarded(manager, self.token, {PATH, urlsplit(self.url).path or "/"})

        async def run() -> None:
            async with manager.run():
                await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

        self._task = asyncio.ensure_future(run())
        # Let it take the socket; a failure to serve shows up here rather than at a query.
        await asyncio.sleep(0)
        if self._task.done():
            self._task.result()
        log.info("skills MCP server started", url=self.url, skills=len(self.catalog.skills))

    async def stop(self) -> None:
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        except (TimeoutError, Exception):
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._task = None


def _session_manager(catalog: Catalog) -> Any:
    from mcp import types
    from mcp.server.lowlevel import Server
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    tools = [types.Tool(name=t["name"], description=t["description"],
                        inputSchema=t["inputSchema"]) for t in TOOLS]

    async def call_tool(name: str, arguments: dict[str, Any]) -> Any:
        try:
            # Reading a file: off the event loop (Llama Stack in library mode shares it).
            text = await asyncio.to_thread(call, catalog, name, arguments)
        except ToolFailure as exc:
            log.info("skill tool refused", tool=name, reason=str(exc))
            return types.CallToolResult(content=[types.TextContent(type="text", text=str(exc))],
                                        isError=True)
        log.info("skill tool called", tool=name, skill=arguments.get("skill_name"))
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server: Any
    if hasattr(Server, "list_tools"):  # the mcp 1.x SDK: handlers by decorator
        server = Server("lcore-skills")
        server.list_tools()(_returning(tools))
        server.call_tool()(call_tool)
    else:  # mcp 2.x (OGX's venv): handlers given to the constructor, with the request context
        async def on_list_tools(_ctx: Any, _params: Any) -> Any:
            return types.ListToolsResult(tools=tools)

        async def on_call_tool(_ctx: Any, params: Any) -> Any:
            return await call_tool(params.name, dict(params.arguments or {}))

        make: Any = Server  # typed against the 1.x SDK this venv has
        server = make("lcore-skills", on_list_tools=on_list_tools, on_call_tool=on_call_tool)

    return StreamableHTTPSessionManager(server, json_response=True, stateless=True,
                                        max_request_body_size=MAX_REQUEST_BYTES)


def _returning(tools: list[Any]) -> Any:
    async def list_tools() -> list[Any]:
        return tools

    return list_tools


def _guarded(manager: Any, token: str, paths: set[str]) -> Any:
    """The MCP endpoint behind the bearer token (compared in constant time)."""
    expected = f"Bearer {token}".encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"authorization", b"")
        if not hmac.compare_digest(given, expected):
            await _plain(send, 401, b"missing or wrong token")
            return
        if scope.get("path") not in paths:
            await _plain(send, 404, b"not found")
            return
        await manager.handle_request(scope, receive, send)

    return app


async def _plain(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
