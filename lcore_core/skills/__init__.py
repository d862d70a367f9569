"""Agent skills (upstream's `skills:` section): config schema, start-up and what a query adds.

`catalog` reads the skill directories, `tools` answers the three skill tools, `server` serves
them over MCP on loopback for Llama Stack. docs/skills.md is the user's guide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from lcore_core.skills.catalog import Catalog, PathError, load_catalog

if TYPE_CHECKING:
    from lcore_core.runtime import Runtime
    from lcore_core.skills.server import SkillsServer

__all__ = ["Catalog", "SkillsSchema", "instructions_for", "loaded", "skill_tools", "start", "stop"]

MAX_PATHS = 100
_MCP_MISSING = "agent skills need the mcp SDK: pip install 'lcore-core[mcp]'"


class SkillsSchema(Schema):
    """`skills: {paths: [...]}`: skill directories, or directories of skill directories."""

    class Meta:
        unknown = RAISE

    paths = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list,
                        validate=validate.Length(max=MAX_PATHS))
    # LCore additions: where the skill tools' MCP server listens (port 0: a free one, per
    # process) and the URL Llama Stack is given for it (default: http://HOST:PORT/mcp). Only
    # needed when Llama Stack runs on another host.
    mcp_host = fields.String(load_default="127.0.0.1", validate=validate.Length(min=1))
    mcp_port = fields.Integer(load_default=0, validate=validate.Range(0, 65535))
    mcp_url = fields.String(load_default=None, allow_none=True)

    @validates_schema
    def _skills(self, data: dict[str, Any], **_: Any) -> None:
        paths = data.get("paths") or []
        if not paths:
            return
        try:
            import mcp  # noqa: F401
        except ImportError:
            raise ValidationError(_MCP_MISSING, "paths") from None
        if data.get("mcp_url"):
            from lcore_core.config.schema import HTTP_URL  # that module imports this one

            try:
                HTTP_URL(data["mcp_url"])
            except ValidationError as exc:
                raise ValidationError(exc.messages, "mcp_url") from None
        if data.get("mcp_url") and not data.get("mcp_port"):
            raise ValidationError("mcp_url needs a fixed mcp_port (0 picks a new port at every "
                                  "start)", "mcp_url")
        try:
            load_catalog(paths)
        except PathError as exc:
            raise ValidationError({"paths": {exc.index: [str(exc)]}}) from None


def _server(runtime: Runtime) -> SkillsServer | None:
    return runtime.state.get("skills_server")  # type: ignore[no-any-return]


async def start(runtime: Runtime) -> None:
    """Load the configured skills and start their MCP server (nothing when none are set)."""
    section = runtime.config.get("skills") or {}
    paths = list(section.get("paths") or [])
    if not paths:
        return
    from lcore_core.errors import ConfigError
    from lcore_core.skills.server import SkillsServer

    if section.get("mcp_port") and runtime.config.service.workers > 1:
        # Each worker has its own token; a shared port would hand calls to the wrong one.
        raise ConfigError("a fixed skills.mcp_port needs service.workers: 1",
                          file=runtime.config.source, key="skills.mcp_port")
    server = SkillsServer(load_catalog(paths), host=section.get("mcp_host") or "127.0.0.1",
                          port=section.get("mcp_port") or 0, url=section.get("mcp_url"))
    # Recorded first: a start-up cancelled half-way still stops what was started.
    runtime.state["skills_server"] = server
    await server.start()


async def stop(runtime: Runtime) -> None:
    server = runtime.state.pop("skills_server", None)
    if server is not None:
        await server.stop()


def loaded(runtime: Runtime) -> Catalog:
    """The loaded skills (empty before start-up and when none are configured)."""
    server = _server(runtime)
    return server.catalog if server is not None else Catalog()


def skill_tools(runtime: Runtime) -> list[dict[str, Any]]:
    """The Responses-API tool entry a query offers for skills (none when none are loaded)."""
    server = _server(runtime)
    return [server.tool()] if server is not None and server.catalog else []


def instructions_for(runtime: Runtime, tools: list[dict[str, Any]]) -> str:
    """The skill catalog for the system prompt, when `tools` offer the skill tools."""
    from lcore_core.skills.tools import instructions

    server = _server(runtime)
    if server is None or not any(t.get("server_url") == server.url for t in tools):
        return ""
    return instructions(server.catalog)
