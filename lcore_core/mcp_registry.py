"""The MCP servers a query offers: those of `mcp_servers` plus those registered at run time
(`/v1/mcp-servers`), kept in this process only, as upstream keeps them."""

from __future__ import annotations

from typing import Any

from lcore_core.config import Settings
from lcore_core.errors import Conflict, Forbidden, UnprocessableEntity
from lcore_core.skills.server import SERVER_LABEL as SKILLS_LABEL

# Runtime registrations a process keeps at most; a client controls how many it adds.
MAX_RUNTIME_SERVERS = 64
DEFAULT_PROVIDER = "model-context-protocol"


class McpRegistry:
    """Static servers (from the configuration, never removed) and runtime ones, in order."""

    def __init__(self, static: list[Any], limit: int = MAX_RUNTIME_SERVERS) -> None:
        self._static = list(static)
        self._runtime: dict[str, Any] = {}
        self.limit = limit
        self._all: list[Any] = list(self._static)

    def servers(self) -> list[Any]:
        """Every server a query may offer: the configured ones first, then the registered."""
        return self._all

    def is_runtime(self, name: str) -> bool:
        return name in self._runtime

    def add(self, fields: dict[str, Any]) -> Any:
        """Register a server; 409 when its name is taken, 422 past `limit` registrations."""
        name = fields["name"]
        # The skills' own MCP server goes to Llama Stack under its label: a second server of
        # that label would make the call ambiguous.
        if name == SKILLS_LABEL or any(s.name == name for s in self._all):
            raise Conflict("Mcp Server already exists",
                           f"Mcp Server with name '{name}' is already registered")
        if len(self._runtime) >= self.limit:
            raise UnprocessableEntity(
                "Too many MCP servers registered",
                f"this service keeps at most {self.limit} MCP servers registered at run "
                f"time; delete one first")
        server = Settings.wrap({
            "name": name, "url": fields["url"],
            "provider_id": fields.get("provider_id") or DEFAULT_PROVIDER,
            "timeout": fields.get("timeout"), "headers": list(fields.get("headers") or ()),
            "authorization_headers": dict(fields.get("authorization_headers") or {}),
            "require_approval": "never"})
        self._runtime[name] = server
        self._all = [*self._static, *self._runtime.values()]
        return server

    def remove(self, name: str) -> bool:
        """Unregister a runtime server: False when unknown, 403 for a configured one."""
        if name not in self._runtime:
            if any(s.name == name for s in self._static):
                raise Forbidden("Cannot delete statically configured MCP server",
                                f"MCP server '{name}' is defined in configuration and cannot "
                                f"be removed via the API.")
            return False
        del self._runtime[name]
        self._all = [*self._static, *self._runtime.values()]
        return True
