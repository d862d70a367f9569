"""MCP servers as Responses-API tools, with per-request header values resolved through hooks."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lcore_core.auth import AuthTuple
from lcore_core.errors import BadRequest
from lcore_core.hookspecs import hookimpl
from lcore_core.runtime import Runtime

MCP_HEADERS = "MCP-HEADERS"
CLIENT = "client"
KUBERNETES = "kubernetes"
_ENV = re.compile(r"^\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}$")


def parse_mcp_headers(raw: str | None, servers: list[Any]) -> dict[str, dict[str, str]]:
    """The `MCP-HEADERS` request header: `{server_name: {header: value}}`; 400 when malformed."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest("Invalid MCP-HEADERS header", f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not all(
            isinstance(v, dict) and all(isinstance(h, str) and isinstance(x, str)
                                        for h, x in v.items()) for v in data.values()):
        raise BadRequest("Invalid MCP-HEADERS header",
                         "expected a JSON object {server_name: {header: value}}")
    known = {s.name for s in servers}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadRequest("Invalid MCP-HEADERS header",
                         f"unknown MCP server(s): {', '.join(unknown)}; configured: "
                         f"{', '.join(sorted(known)) or 'none'}")
    return data


def mcp_tools(runtime: Runtime, auth: AuthTuple,
              client_headers: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """One `{"type": "mcp", ...}` tool per configured server, headers resolved for this caller."""
    tools = []
    for server in runtime.config.mcp_servers:
        given = client_headers.get(server.name, {})
        headers: dict[str, str] = {}
        authorization = None
        for name, spec in server.authorization_headers.items():
            value = runtime.plugins.mcp_header_value(spec, server, name, auth, given)
            if value is None:
                continue
            if name.lower() == "authorization":
                # Llama Stack takes the token separately and sends it as `Bearer <token>`.
                authorization = value.removeprefix("Bearer ").strip()
            else:
                headers[name] = value
        tool: dict[str, Any] = {"type": "mcp", "server_label": server.name,
                                "server_url": server.url, "require_approval": "never"}
        if headers:
            tool["headers"] = headers
        if authorization:
            tool["authorization"] = authorization
        tools.append(tool)
    return tools


class CoreHeaderValues:
    """Resolves `client`, `${env.VAR}`, a file path, or a literal (tried last by the core)."""

    @hookimpl(trylast=True)
    def lcore_mcp_header_value(self, spec: str, header: str,
                               client_headers: dict[str, str]) -> str | None:
        if spec == CLIENT:
            for name, value in client_headers.items():
                if name.lower() == header.lower():
                    return value
            return None
        if spec == KUBERNETES:
            return None
        env = _ENV.match(spec)
        if env:
            return os.environ.get(env.group(1))
        path = Path(spec)
        if spec.startswith(("/", "./", "~")) and path.expanduser().is_file():
            return path.expanduser().read_text(encoding="utf-8").strip()
        return spec
