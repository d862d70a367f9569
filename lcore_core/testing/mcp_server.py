"""A real MCP server (the ``mcp`` SDK's FastMCP, streamable HTTP) for tests, on 127.0.0.1.

It offers ``get_weather(city)`` and records the headers and tool calls it receives, so a test can
assert that Llama Stack called the tool and forwarded headers and authorization.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lcore_core.testing._server import ThreadedASGIServer

__all__ = ["MCPTestServer", "RecordedToolCall", "weather_report"]


def weather_report(city: str) -> str:
    """The deterministic answer of ``get_weather``."""
    return f"The weather in {city} is sunny, 21 degrees Celsius."


@dataclass(frozen=True)
class RecordedToolCall:
    """One tool invocation: its name, arguments and the HTTP headers of the request carrying it."""

    name: str
    arguments: dict[str, Any]
    headers: dict[str, str]


class MCPTestServer:
    """FastMCP over streamable HTTP at ``.url`` (``http://127.0.0.1:PORT/mcp``).

    ``tools`` adds more tools: a mapping of name to a plain function with type-hinted arguments;
    ``weather=False`` leaves ``get_weather`` out (Llama Stack refuses two servers offering one
    tool name in a call). ``bearer_token`` makes it an OAuth-protected resource server (the SDK's
    own bearer middleware): a request without that token gets 401 with a ``WWW-Authenticate``
    challenge naming its protected-resource metadata.
    """

    def __init__(
        self,
        *,
        name: str = "lcore-test-mcp",
        port: int = 0,
        tools: dict[str, Callable[..., Any]] | None = None,
        weather: bool = True,
        bearer_token: str | None = None,
    ) -> None:
        self.name = name
        self.weather = weather
        self.bearer_token = bearer_token
        self.extra_tools = dict(tools or {})
        self._lock = threading.Lock()
        self._headers: list[dict[str, str]] = []
        self._methods: list[str] = []
        self._calls: list[RecordedToolCall] = []
        self._server = ThreadedASGIServer(self._app, port=port, name="mcp")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/mcp"

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """Headers of every HTTP request received (names lower-cased), oldest first."""
        with self._lock:
            return list(self._headers)

    @property
    def requests(self) -> list[tuple[str, dict[str, str]]]:
        """(method, headers) of every HTTP request received, oldest first."""
        with self._lock:
            return list(zip(self._methods, self._headers, strict=True))

    @property
    def tool_calls(self) -> list[RecordedToolCall]:
        with self._lock:
            return list(self._calls)

    def reset(self) -> None:
        with self._lock:
            self._headers.clear()
            self._methods.clear()
            self._calls.clear()

    def start(self) -> MCPTestServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MCPTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record_call(self, name: str, arguments: dict[str, Any]) -> None:
        from mcp.server.lowlevel.server import request_ctx

        # the HTTP request behind this tool call, so headers pair up with the call
        try:
            raw = getattr(request_ctx.get().request, "headers", None) or {}
        except LookupError:
            raw = {}
        headers = {k.lower(): v for k, v in dict(raw).items()}
        with self._lock:
            self._calls.append(RecordedToolCall(name, arguments, headers))

    def _app(self) -> Any:
        # a fresh FastMCP per start: its session manager can run only once
        from mcp.server.fastmcp import FastMCP

        mcp = FastMCP(self.name, stateless_http=True, log_level="WARNING",
                      **self._auth_settings())

        if self.weather:
            @mcp.tool(description="Current weather for a city.")
            def get_weather(city: str) -> str:
                self._record_call("get_weather", {"city": city})
                return weather_report(city)

        for tool_name, function in self.extra_tools.items():
            mcp.add_tool(self._recording(tool_name, function), name=tool_name)

        inner = mcp.streamable_http_app()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
                with self._lock:
                    self._headers.append(headers)
                    self._methods.append(scope["method"])
            await inner(scope, receive, send)

        return app

    def _auth_settings(self) -> dict[str, Any]:
        if self.bearer_token is None:
            return {}
        from mcp.server.auth.provider import AccessToken
        from mcp.server.auth.settings import AuthSettings

        expected = self.bearer_token

        class Verifier:
            async def verify_token(self, token: str) -> AccessToken | None:
                if token != expected:
                    return None
                return AccessToken(token=token, client_id="lcore-test", scopes=[])

        origin = f"http://127.0.0.1:{self._server.port}"
        return {"token_verifier": Verifier(),
                "auth": AuthSettings(issuer_url=f"{origin}/issuer",  # type: ignore[arg-type]
                                     resource_server_url=self.url,  # type: ignore[arg-type]
                                     validate_token_resource=False)}

    def _recording(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._record_call(name, kwargs)
            return function(*args, **kwargs)

        return wrapper
