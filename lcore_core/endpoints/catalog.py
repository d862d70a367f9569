"""Models, providers, tools, shields, RAGs (mapped from Llama Stack, upstream's JSON shapes)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import Any

import structlog
from marshmallow import Schema, fields
from quart import Blueprint, current_app, g, jsonify, request

from lcore_core import rag, skills
from lcore_core.auth import Action, authorize, may
from lcore_core.config import mask, mask_url
from lcore_core.errors import BadRequest, NotFound
from lcore_core.llama import llama_errors
from lcore_core.mcp import (
    MCP_HEADERS,
    check_oauth,
    list_server_tools,
    mcp_tools,
    parse_mcp_headers,
)
from lcore_core.pipeline import model_entry
from lcore_core.skills import tools as skill_tools
from lcore_core.web import doc, route

bp = Blueprint("catalog", __name__)
log = structlog.get_logger("lcore.catalog")

#: What `/v1/tools` reports as the source of a tool Llama Stack itself provides (as upstream).
BUILTIN_SOURCE = "builtin"
MCP_SOURCE = "mcp"


class ModelSchema(Schema):
    identifier = fields.String(required=True)
    metadata = fields.Dict(required=True)
    api_model_type = fields.String(required=True)
    provider_id = fields.String(required=True)
    type = fields.String(required=True)
    provider_resource_id = fields.String(required=True)
    model_type = fields.String(required=True)


class ModelsSchema(Schema):
    models = fields.List(fields.Nested(ModelSchema), required=True)


class ProviderSummarySchema(Schema):
    provider_id = fields.String(required=True)
    provider_type = fields.String(required=True)


class ProvidersSchema(Schema):
    providers = fields.Dict(keys=fields.String(),
                            values=fields.List(fields.Nested(ProviderSummarySchema)),
                            required=True)


class ProviderSchema(Schema):
    api = fields.String(required=True)
    config = fields.Dict(required=True)
    health = fields.Dict(required=True)
    provider_id = fields.String(required=True)
    provider_type = fields.String(required=True)


class ToolParameterSchema(Schema):
    name = fields.String(required=True)
    description = fields.String()
    parameter_type = fields.String()
    required = fields.Boolean()
    default = fields.Raw(allow_none=True)


class ToolSchema(Schema):
    identifier = fields.String(required=True)
    description = fields.String()
    parameters = fields.List(fields.Nested(ToolParameterSchema))
    provider_id = fields.String()
    toolgroup_id = fields.String()
    server_source = fields.String(metadata={"description": "'builtin' or the MCP server URL"})
    type = fields.String()
    source = fields.String(metadata={"description": "LCore: 'builtin' or 'mcp'"})


class ToolsSchema(Schema):
    tools = fields.List(fields.Nested(ToolSchema), required=True)


class ShieldSchema(Schema):
    """A configured shield (`name`, `config`: upstream's entry) or a Llama Stack shield."""

    identifier = fields.String(required=True)
    name = fields.String(metadata={"description": "A configured shield's name"})
    provider_resource_id = fields.String(allow_none=True)
    provider_id = fields.String(required=True)
    type = fields.String()
    params = fields.Dict()
    config = fields.Dict(metadata={"description": "A configured shield's configuration"})


class ShieldsSchema(Schema):
    shields = fields.List(fields.Nested(ShieldSchema), required=True)


class RAGListSchema(Schema):
    rags = fields.List(fields.String(), required=True)


class FileCountsSchema(Schema):
    cancelled = fields.Integer()
    completed = fields.Integer()
    failed = fields.Integer()
    in_progress = fields.Integer()
    total = fields.Integer()


class RAGInfoSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(allow_none=True)
    created_at = fields.Integer(required=True)
    last_active_at = fields.Integer(allow_none=True)
    usage_bytes = fields.Integer(required=True)
    expires_at = fields.Integer(allow_none=True)
    object = fields.String(required=True)
    status = fields.String(required=True)
    file_counts = fields.Nested(FileCountsSchema)


def _client() -> Any:
    return current_app.runtime.llama.client  # type: ignore[attr-defined]


def _dump(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "model_dump"):
        return dict(obj.model_dump())
    return dict(obj) if isinstance(obj, dict) else {}


@contextlib.contextmanager
def _lookup(resource: str, resource_id: str) -> Iterator[None]:
    """`llama_errors()` where an unknown id (400/404 in server mode) is upstream's 404.

    An id that cannot be one (control characters, slashes, spaces) is a 400 before any call:
    passed on, it would break the request line and read as Llama Stack being down.
    """
    if not _RESOURCE_ID.match(resource_id):
        raise BadRequest(f"Invalid {resource.lower()} ID format",
                         f"The {resource.lower()} ID {resource_id[:80]!r} has invalid format.")
    try:
        with llama_errors():
            yield
    except (BadRequest, NotFound) as exc:
        raise _not_found(resource, resource_id) from exc


_RESOURCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,255}$")


def _not_found(resource: str, resource_id: str) -> NotFound:
    return NotFound.of(resource, resource_id)


# --- models ------------------------------------------------------------------------------


@route(bp, "/v1/models", "/models")
@doc(summary="Models Llama Stack serves; `?model_type=llm` (or embedding) filters",
     tags=["models"], responses={200: ModelsSchema, 503: "Llama Stack unavailable"})
@authorize(Action.GET_MODELS)
async def models() -> Any:
    with llama_errors("models.list"):
        listed = await _client().models.list()
    entries = [model_entry(m) for m in listed]
    wanted = request.args.get("model_type")
    if wanted:
        entries = [m for m in entries if m["model_type"] == wanted]
    return jsonify({"models": entries})


# --- providers ---------------------------------------------------------------------------


async def _providers() -> list[dict[str, Any]]:
    with llama_errors("providers.list"):
        listed = await _client().providers.list()
    return [_dump(p) for p in getattr(listed, "data", listed)]


@route(bp, "/v1/providers", "/providers")
@doc(summary="Llama Stack's providers grouped by API", tags=["providers"],
     responses={200: ProvidersSchema, 503: "Llama Stack unavailable"})
@authorize(Action.LIST_PROVIDERS)
async def list_providers() -> Any:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for p in await _providers():
        grouped.setdefault(str(p.get("api")), []).append(
            {"provider_id": p.get("provider_id"), "provider_type": p.get("provider_type")})
    return jsonify({"providers": grouped})


@route(bp, "/v1/providers/<provider_id>", "/providers/<provider_id>")
@doc(summary="One provider: API, configuration (secrets masked) and health",
     tags=["providers"], responses={200: ProviderSchema, 404: "Unknown provider",
                                    503: "Llama Stack unavailable"})
@authorize(Action.GET_PROVIDER)
async def get_provider(provider_id: str) -> Any:
    # Looked up in the listing: `providers.retrieve` fails differently in server and library
    # mode for an unknown id (400 vs a raw ValueError).
    for p in await _providers():
        if p.get("provider_id") == provider_id:
            return jsonify({"api": p.get("api"), "config": mask(p.get("config") or {}),
                            "health": p.get("health") or {},
                            "provider_id": p.get("provider_id"),
                            "provider_type": p.get("provider_type")})
    raise _not_found("Provider", provider_id)


# --- tools -------------------------------------------------------------------------------


def _parameters(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    schema = schema or {}
    required = set(schema.get("required") or [])
    params = []
    for name, spec in (schema.get("properties") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        kind = spec.get("type") or "string"
        params.append({"name": name, "description": spec.get("description") or "",
                       "parameter_type": kind if isinstance(kind, str) else "/".join(kind),
                       "required": name in required, "default": spec.get("default")})
    return params


def builtin_tool_entry(tool: dict[str, Any]) -> dict[str, Any]:
    meta = tool.get("metadata") or {}
    return {"identifier": tool.get("name") or "", "description": tool.get("description") or "",
            "parameters": _parameters(tool.get("input_schema")),
            "provider_id": str(meta.get("provider_id") or tool.get("provider_id") or ""),
            "toolgroup_id": tool.get("toolgroup_id") or "", "server_source": BUILTIN_SOURCE,
            "type": "tool", "source": BUILTIN_SOURCE}


#: A built-in tool group and the type of the tool runtime provider serving it.
BUILTIN_GROUP_PROVIDERS = {"builtin::file_search": "inline::file-search"}
#: The file-search group's tools as Llama Stack 0.7 lists them, for a backend that lists none.
FILE_SEARCH_TOOLS: list[dict[str, Any]] = [
    {"toolgroup_id": "builtin::file_search", "name": "insert_into_memory",
     "description": "Insert documents into memory", "input_schema": None},
    {"toolgroup_id": "builtin::file_search", "name": "file_search",
     "description": "Search files for relevant information",
     "input_schema": {"type": "object", "required": ["query"], "properties": {"query": {
         "type": "string", "description": "The query to search for. Can be a natural language "
                                         "sentence or keywords."}}}},
]


async def _fill_provider_ids(entries: list[dict[str, Any]]) -> None:
    """Llama Stack 0.7 lists its built-in tools without the provider serving them: name the
    tool runtime provider of the group's type, as upstream's catalog does (`file-search`)."""
    served = {p.get("provider_type"): p.get("provider_id") for p in await _providers()
              if p.get("api") == "tool_runtime"}
    for entry in entries:
        if not entry["provider_id"]:
            kind = BUILTIN_GROUP_PROVIDERS.get(entry["toolgroup_id"])
            entry["provider_id"] = str(served.get(kind) or "")


def server_source(server: Any) -> str:
    """Where an MCP server's tools come from, as this caller may see it: the URL (credentials
    masked) for an admin, the server's name for everyone else (URLs reveal internal hosts)."""
    return mask_url(server.url) if may(g.auth, Action.ADMIN) else server.name


def mcp_server_entry(server: Any, note: str = "") -> dict[str, Any]:
    """A server whose tools could not be listed for this caller; `note` says why."""
    description = f"MCP server {server.name}" + (f" ({note})" if note else "")
    return {"identifier": server.name, "description": description,
            "parameters": [], "provider_id": server.provider_id, "toolgroup_id": server.name,
            "server_source": server_source(server), "type": "mcp_server", "source": MCP_SOURCE}


def mcp_tool_entry(server: Any, tool: dict[str, Any]) -> dict[str, Any]:
    return {"identifier": tool.get("name") or "", "description": tool.get("description") or "",
            "parameters": _parameters(tool.get("inputSchema")),
            "provider_id": server.provider_id, "toolgroup_id": server.name,
            "server_source": server_source(server), "type": "tool", "source": MCP_SOURCE}


async def _mcp_entries(runtime: Any) -> list[dict[str, Any]]:
    """Each MCP server's own tools, asked with the caller's resolved headers, in parallel."""
    servers = runtime.mcp_servers()
    if not servers:
        return []
    client_headers = parse_mcp_headers(request.headers.get(MCP_HEADERS), servers)
    await check_oauth(runtime, g.auth, client_headers)
    offered = {t["server_label"]: t for t in mcp_tools(runtime, g.auth, client_headers,
                                                       dict(request.headers))}
    timeouts = {s.name: float(s.timeout or 5.0) for s in servers}
    listed = await asyncio.gather(*(list_server_tools(tool, timeouts[name])
                                    for name, tool in offered.items()), return_exceptions=True)
    by_name = dict(zip(offered, listed, strict=True))
    entries: list[dict[str, Any]] = []
    for server in servers:
        result = by_name.get(server.name)
        if result is None:
            entries.append(mcp_server_entry(server, "needs client headers in MCP-HEADERS"))
        elif isinstance(result, BaseException):
            log.warning("mcp tools not listed", server=server.name, error=str(result))
            entries.append(mcp_server_entry(server, "unavailable"))
        else:
            entries.extend(mcp_tool_entry(server, tool) for tool in result)
    return entries


@route(bp, "/v1/tools", "/tools")
@doc(summary="Llama Stack's built-in tools and each configured MCP server's tools",
     tags=["tools"], responses={200: ToolsSchema, 400: "Malformed MCP-HEADERS",
                                503: "Llama Stack unavailable"})
@authorize(Action.GET_TOOLS)
async def tools() -> Any:
    # The 0.7 client has no `tools` resource; the route is still served (both modes).
    runtime = current_app.runtime  # type: ignore[attr-defined]
    try:
        with llama_errors("tools.list"):
            listed = await _client().get("/v1/tools", cast_to=object)
    except NotFound:
        listed = None  # OGX serves no tool listing
    if listed is None:
        raw = FILE_SEARCH_TOOLS
    else:
        raw = listed.get("data", []) if isinstance(listed, dict) else listed or []
    entries = [builtin_tool_entry(_dump(t)) for t in raw]
    if any(not e["provider_id"] for e in entries):
        await _fill_provider_ids(entries)
    if listed is None:
        # As upstream: the file-search tools when a file-search provider is configured.
        entries = [e for e in entries if e["provider_id"]]
    entries.extend(await _mcp_entries(runtime))
    if skills.loaded(runtime):
        # As upstream: the skill tools, after the others, under names not already listed.
        listed = {e["identifier"] for e in entries}
        entries.extend(e for e in skill_tools.catalog_entries()
                       if e["identifier"] not in listed)
    return jsonify({"tools": entries})


# --- shields -----------------------------------------------------------------------------


@route(bp, "/v1/shields", "/shields")
@doc(summary="The configured shields (guardrails), then Llama Stack's", tags=["shields"],
     responses={200: ShieldsSchema, 503: "Llama Stack unavailable"})
@authorize(Action.GET_SHIELDS)
async def shields() -> Any:
    listed: Any = []
    llama = current_app.runtime.llama  # type: ignore[attr-defined]
    if llama.has_safety_api:
        try:
            with llama_errors("shields.list"):
                listed = await _client().shields.list()
        except NotFound:  # OGX, first reached after a degraded start
            llama.safety_api_missing()
    # Upstream's entries for the `shields:` section; `identifier` too, for LCore's clients.
    entries: list[dict[str, Any]] = [
        {"name": s["name"], "identifier": s["name"], "provider_id": s["provider_id"],
         "type": "shield", "config": dict(s["config"])}
        for s in current_app.runtime.config.get("shields") or []]  # type: ignore[attr-defined]
    for shield in getattr(listed, "data", listed):
        data = _dump(shield)
        entries.append({"identifier": data.get("identifier"),
                        "provider_resource_id": data.get("provider_resource_id"),
                        "provider_id": data.get("provider_id"),
                        "type": data.get("type") or "shield",
                        "params": data.get("params") or {}})
    return jsonify({"shields": entries})


# --- RAGs (vector stores) ----------------------------------------------------------------


@route(bp, "/v1/rags", "/rags")
@doc(summary="Vector store ids usable for RAG", tags=["rags"],
     responses={200: RAGListSchema, 503: "Llama Stack unavailable"})
@authorize(Action.LIST_RAGS)
async def list_rags() -> Any:
    # As upstream: a BYOK store by its configured rag_id, any other by its id.
    config = current_app.runtime.config  # type: ignore[attr-defined]
    ids: list[str] = []
    with llama_errors("vector_stores.list"):
        async for store in _client().vector_stores.list():
            ids.append(rag.rag_id_of(config, store.id, getattr(store, "name", None))
                       or store.id)
    return jsonify({"rags": ids})


@route(bp, "/v1/rags/<rag_id>", "/rags/<rag_id>")
@doc(summary="One vector store's details", tags=["rags"],
     responses={200: RAGInfoSchema, 400: "Not a possible RAG ID", 404: "Unknown RAG",
                503: "Llama Stack unavailable"})
@authorize(Action.GET_RAG)
async def get_rag(rag_id: str) -> Any:
    runtime = current_app.runtime  # type: ignore[attr-defined]
    with _lookup("Rag", rag_id):
        store_id = await rag.store_id_for(runtime, rag_id)
        store = _dump(await _client().vector_stores.retrieve(store_id))
    shown = rag.rag_id_of(runtime.config, store.get("id"), store.get("name")) or store.get("id")
    return jsonify({"id": shown, "name": store.get("name"),
                    "created_at": store.get("created_at"),
                    "last_active_at": store.get("last_active_at"),
                    "usage_bytes": store.get("usage_bytes") or 0,
                    "expires_at": store.get("expires_at"),
                    "object": store.get("object") or "vector_store",
                    "status": store.get("status") or "unknown",
                    "file_counts": store.get("file_counts") or {}})
