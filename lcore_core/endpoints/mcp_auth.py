"""`GET /v1/mcp-auth/client-options`: which MCP servers take client-supplied headers."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields
from quart import Blueprint, current_app, jsonify

from lcore_core.auth import Action, authorize
from lcore_core.mcp import client_header_names
from lcore_core.web import doc, route

bp = Blueprint("mcp_auth", __name__)


class ServerAuthSchema(Schema):
    name = fields.String(required=True)
    client_auth_headers = fields.List(fields.String(), required=True)


class ClientOptionsSchema(Schema):
    servers = fields.List(fields.Nested(ServerAuthSchema), required=True)


@route(bp, "/v1/mcp-auth/client-options", "/mcp-auth/client-options")
@doc(summary="MCP servers that accept client-provided headers (send them in MCP-HEADERS)",
     tags=["mcp"], responses={200: ClientOptionsSchema})
@authorize(Action.GET_TOOLS)
async def client_options() -> Any:
    servers = current_app.runtime.mcp_servers()  # type: ignore[attr-defined]
    options = [{"name": s.name, "client_auth_headers": names} for s in servers
               if (names := client_header_names(s))]
    return jsonify({"servers": options})
