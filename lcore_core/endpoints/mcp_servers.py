"""`/v1/mcp-servers`: list the MCP servers queries offer, register more at run time, remove
those registered (lcore_core.mcp_registry; this process only, as upstream)."""

from __future__ import annotations

from typing import Any

import structlog
from marshmallow import Schema, ValidationError, fields, validate
from quart import Blueprint, current_app, jsonify

from lcore_core.auth import Action, authorize
from lcore_core.config.schema import HTTP_URL, Base, _header_names
from lcore_core.mcp import CLIENT, KUBERNETES, OAUTH
from lcore_core.mcp_registry import DEFAULT_PROVIDER
from lcore_core.schemas import LaxInteger
from lcore_core.web import doc, load_body, route

bp = Blueprint("mcp_servers", __name__)
log = structlog.get_logger("lcore.mcp_servers")

MAX_NAME = 256
MAX_URL = 2048
MAX_HEADERS = 32
MAX_HEADER_NAME = 256
# What a registered server's authorization header may take: a token resolved per request.
# File paths (secrets on this host) belong in the configuration file only, as upstream.
RUNTIME_AUTH_VALUES = (CLIENT, KUBERNETES, OAUTH)


def _http_url(value: str) -> None:
    if not value.startswith(("http://", "https://")):
        raise ValidationError("URL must use http:// or https:// scheme")
    HTTP_URL(value)


def _auth_values(value: dict[str, str]) -> None:
    if len(value) > MAX_HEADERS:
        raise ValidationError(f"at most {MAX_HEADERS} authorization headers")
    for name, spec in value.items():
        if spec.strip() not in RUNTIME_AUTH_VALUES:
            raise ValidationError(
                f"Authorization header '{name[:MAX_HEADER_NAME]}' has unsupported value "
                f"'{spec.strip()[:MAX_HEADER_NAME]}'. Dynamic registration only supports: "
                f"{', '.join(sorted(RUNTIME_AUTH_VALUES))}. File-path based secrets are only "
                f"supported in static YAML config.")


class MCPServerRegistrationRequestSchema(Base):
    name = fields.String(required=True, validate=validate.Length(1, MAX_NAME),
                         metadata={"description": "Unique name for the MCP server",
                                   "example": "my-mcp-tools"})
    url = fields.String(required=True,
                        validate=[validate.Length(max=MAX_URL), _http_url],
                        metadata={"description": "URL of the MCP server endpoint (http or https)",
                                  "example": "http://mcp.example.com:7008/api/mcp"})
    provider_id = fields.String(load_default=DEFAULT_PROVIDER,
                                validate=validate.Length(1, MAX_NAME),
                                metadata={"description": "MCP provider identification"})
    authorization_headers = fields.Dict(
        keys=fields.String(validate=validate.Length(1, MAX_HEADER_NAME)),
        values=fields.String(validate=validate.Length(max=MAX_HEADER_NAME)),
        load_default=None, allow_none=True, validate=_auth_values,
        metadata={"description": "Headers to send to the MCP server, each resolved per "
                                 "request: client (the caller's value in MCP-HEADERS), "
                                 "kubernetes (the caller's token) or oauth"})
    headers = fields.List(fields.String(validate=validate.Length(1, MAX_HEADER_NAME)),
                          load_default=None, allow_none=True,
                          validate=[validate.Length(max=MAX_HEADERS), _header_names],
                          metadata={"description": "Names of incoming request headers to "
                                                   "forward to the MCP server"})
    timeout = LaxInteger(load_default=None, allow_none=True,
                         validate=validate.Range(0, 3600, min_inclusive=False),
                         metadata={"description": "Request timeout in seconds"})


class MCPServerRegistrationResponseSchema(Schema):
    name = fields.String(required=True)
    url = fields.String(required=True)
    provider_id = fields.String(required=True)
    message = fields.String(required=True)


class MCPServerInfoSchema(Schema):
    name = fields.String(required=True)
    url = fields.String(required=True)
    provider_id = fields.String(required=True)
    source = fields.String(required=True, metadata={
        "description": "config (from the configuration file) or api (registered at run time)"})


class MCPServerListResponseSchema(Schema):
    servers = fields.List(fields.Nested(MCPServerInfoSchema), required=True)


class MCPServerDeleteResponseSchema(Schema):
    name = fields.String(required=True)
    deleted = fields.Boolean(required=True)
    response = fields.String(required=True)


def _registry() -> Any:
    return current_app.runtime.mcp  # type: ignore[attr-defined]


@route(bp, "/v1/mcp-servers")
@doc(summary="The MCP servers queries offer: configured (source config) and registered at run "
             "time (source api)", tags=["mcp-servers"],
     responses={200: MCPServerListResponseSchema})
@authorize(Action.LIST_MCP_SERVERS)
async def list_mcp_servers() -> Any:
    registry = _registry()
    return jsonify({"servers": [
        {"name": s.name, "url": s.url, "provider_id": s.provider_id,
         "source": "api" if registry.is_runtime(s.name) else "config"}
        for s in registry.servers()]})


@route(bp, "/v1/mcp-servers", methods=["POST"])
@doc(summary="Register an MCP server in this process; queries offer it from now on",
     tags=["mcp-servers"], body=MCPServerRegistrationRequestSchema,
     responses={201: MCPServerRegistrationResponseSchema, 409: "A server of that name exists",
                422: "Invalid fields, or as many servers registered as this service keeps"})
@authorize(Action.REGISTER_MCP_SERVER)
async def register_mcp_server() -> Any:
    body = await load_body(MCPServerRegistrationRequestSchema)
    server = _registry().add(body)
    log.info("mcp server registered", server=server.name, url=server.url)
    return jsonify({"name": server.name, "url": server.url, "provider_id": server.provider_id,
                    "message": f"MCP server '{server.name}' registered successfully"}), 201


@route(bp, "/v1/mcp-servers/<name>", methods=["DELETE"])
@doc(summary="Remove an MCP server registered at run time (200 with deleted: false when there "
             "is none of that name)", tags=["mcp-servers"],
     responses={200: MCPServerDeleteResponseSchema,
                403: "The server is in the configuration file"})
@authorize(Action.DELETE_MCP_SERVER)
async def delete_mcp_server(name: str) -> Any:
    deleted = _registry().remove(name)
    if deleted:
        current_app.runtime.mcp_health.forget(name)  # type: ignore[attr-defined]
    log.info("mcp server deleted" if deleted else "mcp server to delete not found",
             server=name[:MAX_NAME])
    return jsonify({"name": name, "deleted": deleted,
                    "response": "MCP server deleted successfully" if deleted
                    else "MCP server not found"})
