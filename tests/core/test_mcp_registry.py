"""The MCP server registry: configured servers stay, runtime ones come and go within a bound."""

from __future__ import annotations

import pytest

from lcore_core.config import Settings
from lcore_core.errors import Conflict, Forbidden, UnprocessableEntity
from lcore_core.mcp_registry import McpRegistry

STATIC = [Settings.wrap({"name": "weather", "url": "http://w/mcp",
                         "provider_id": "model-context-protocol"})]


def test_registered_servers_follow_the_configured_ones() -> None:
    registry = McpRegistry(STATIC)
    added = registry.add({"name": "tides", "url": "http://t/mcp", "provider_id": None,
                          "headers": None, "authorization_headers": {"Authorization": "client"}})
    assert added.provider_id == "model-context-protocol"
    assert added.headers == [] and added.authorization_headers == {"Authorization": "client"}
    assert added.require_approval == "never"
    assert [s.name for s in registry.servers()] == ["weather", "tides"]
    assert registry.is_runtime("tides") and not registry.is_runtime("weather")


def test_names_are_unique_across_both() -> None:
    registry = McpRegistry(STATIC)
    registry.add({"name": "tides", "url": "http://t/mcp"})
    for name in ("tides", "weather", "agent-skills"):
        with pytest.raises(Conflict) as caught:
            registry.add({"name": name, "url": "http://x/mcp"})
        assert caught.value.response == "Mcp Server already exists"
        assert caught.value.cause == f"Mcp Server with name '{name}' is already registered"


def test_the_number_of_registrations_is_bounded() -> None:
    registry = McpRegistry(STATIC, limit=2)
    registry.add({"name": "a", "url": "http://a/mcp"})
    registry.add({"name": "b", "url": "http://b/mcp"})
    with pytest.raises(UnprocessableEntity):
        registry.add({"name": "c", "url": "http://c/mcp"})
    assert registry.remove("a")
    registry.add({"name": "c", "url": "http://c/mcp"})
    assert [s.name for s in registry.servers()] == ["weather", "b", "c"]


def test_remove() -> None:
    registry = McpRegistry(STATIC)
    registry.add({"name": "tides", "url": "http://t/mcp"})
    listed = registry.servers()
    assert registry.remove("tides") is True
    assert registry.remove("tides") is False
    assert registry.remove("never-there") is False
    with pytest.raises(Forbidden):
        registry.remove("weather")
    assert [s.name for s in registry.servers()] == ["weather"]
    # A list handed out earlier is not changed under its reader.
    assert [s.name for s in listed] == ["weather", "tides"]
