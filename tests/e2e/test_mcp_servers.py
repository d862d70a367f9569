"""`/v1/mcp-servers`: a server registered at run time is offered to the model and reached."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.mcp_registry import MAX_RUNTIME_SERVERS
from lcore_core.plugins import load_plugins
from lcore_core.testing.mcp_server import MCPTestServer

from .support import MODES, Lcore, backend_for, lcore_config, started


def tide_report(port: str) -> str:
    return f"High tide at {port}: 06:42, low tide 12:55 (tide-7731)"


@pytest.fixture(scope="module")
def tides_server() -> Iterator[MCPTestServer]:
    """A second real MCP server, only ever registered at run time."""

    def get_tide(port: str) -> str:
        """Tide times for a port."""
        return tide_report(port)

    with MCPTestServer(name="tides", weather=False, tools={"get_tide": get_tide}) as server:
        yield server


@pytest.fixture(scope="module", params=MODES)
async def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              llama_stack_server: Any, llama_stack_library_config: Path,
              mcp_test_server: Any) -> AsyncIterator[Lcore]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"mcp-servers-{mode}")
    llama = backend_for(request, mode, llama_stack_server, llama_stack_library_config)
    # Library mode gets no configured server: there a call with two MCP servers whose model
    # calls the second one's tool is abandoned (499), with or without registration (as on main).
    static = [{"name": "weather", "url": mcp_test_server.url}] if mode != "library" else []
    config = lcore_config(workdir, mode, llama, mcp_servers=static)
    lcore_app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(lcore_app) as test_app:
        yield Lcore(lcore_app, test_app.test_client(), mode, workdir)


async def test_registered_server_is_used_until_deleted(app: Lcore, llm: Any,
                                                       tides_server: MCPTestServer,
                                                       mcp_test_server: Any) -> None:
    tides_server.reset()
    client = app.client
    configured = [{"name": "weather", "url": mcp_test_server.url,
                   "provider_id": "model-context-protocol", "source": "config"}
                  ] if app.mode != "library" else []
    listing = await (await client.get("/v1/mcp-servers")).get_json()
    assert listing == {"servers": configured}

    created = await client.post("/v1/mcp-servers", json={
        "name": "tides", "url": tides_server.url, "headers": ["X-Forward-Me"], "timeout": 30})
    assert created.status_code == 201, await created.get_data(as_text=True)
    assert await created.get_json() == {
        "name": "tides", "url": tides_server.url, "provider_id": "model-context-protocol",
        "message": "MCP server 'tides' registered successfully"}
    listing = await (await client.get("/v1/mcp-servers")).get_json()
    assert [(s["name"], s["source"]) for s in listing["servers"]] == [
        *[("weather", "config")][:len(configured)], ("tides", "api")]

    # The tools list asks the registered server for its tools.
    tools = await (await client.get("/v1/tools")).get_data(as_text=True)
    assert "get_tide" in tools

    # A query offers its tool to the model, and the model's call reaches the server.
    llm.script("tide in brest", tool_call=("get_tide", {"port": "Brest"}),
               then="Tides: {tool_output}")
    answer = await client.post("/v2/query", json={"query": "tide in brest",
                                                  "generate_topic_summary": False},
                               headers={"X-Forward-Me": "fwd-42"})
    text = await answer.get_data(as_text=True)
    assert answer.status_code == 200, text
    assert tide_report("Brest") in text, (dict(answer.headers), text)
    [call] = [c for c in tides_server.tool_calls if c.name == "get_tide"]
    assert call.arguments == {"port": "Brest"}
    assert call.headers.get("x-forward-me") == "fwd-42"

    # /v1/responses offers it too.
    await client.post("/v1/responses", json={"input": "responses tide check"})
    asked = [r for r in llm.chat_requests if "responses tide check" in r.text]
    assert asked and "get_tide" in asked[0].tool_names

    taken = await client.post("/v1/mcp-servers", json={"name": "tides",
                                                       "url": tides_server.url})
    assert taken.status_code == 409
    assert (await taken.get_json())["detail"] == {
        "response": "Mcp Server already exists",
        "cause": "Mcp Server with name 'tides' is already registered"}
    if configured:
        clash = await client.post("/v1/mcp-servers", json={"name": "weather",
                                                           "url": tides_server.url})
        assert clash.status_code == 409
        static = await client.delete("/v1/mcp-servers/weather")
        assert static.status_code == 403
        assert (await static.get_json())["detail"] == {
            "response": "Cannot delete statically configured MCP server",
            "cause": "MCP server 'weather' is defined in configuration and cannot be removed "
                     "via the API."}

    deleted = await client.delete("/v1/mcp-servers/tides")
    assert deleted.status_code == 200
    assert await deleted.get_json() == {"name": "tides", "deleted": True,
                                        "response": "MCP server deleted successfully"}
    again = await client.delete("/v1/mcp-servers/tides")
    assert again.status_code == 200
    assert await again.get_json() == {"name": "tides", "deleted": False,
                                      "response": "MCP server not found"}

    await client.post("/v2/query", json={"query": "tide after delete",
                                         "generate_topic_summary": False})
    asked = [r for r in llm.chat_requests if "tide after delete" in r.text]
    assert asked and "get_tide" not in asked[0].tool_names
    listing = await (await client.get("/v1/mcp-servers")).get_json()
    assert listing == {"servers": configured}


@pytest.mark.parametrize(("fields", "text"), [
    ({"name": "x", "url": "ftp://example.com/mcp"}, "URL must use http:// or https:// scheme"),
    ({"name": "x", "url": "http://"}, "valid URL"),
    ({"name": "x", "url": "http://h/" + "p" * 2100}, "url"),
    ({"name": "", "url": "http://h/mcp"}, "name"),
    ({"name": "n" * 257, "url": "http://h/mcp"}, "name"),
    ({"url": "http://h/mcp"}, "name"),
    ({"name": "x", "url": "http://h/mcp", "authorization_headers": {"Authorization":
                                                                    "/etc/secret"}},
     "unsupported value '/etc/secret'"),
    ({"name": "x", "url": "http://h/mcp", "headers": [f"h{i}" for i in range(33)]}, "headers"),
    ({"name": "x", "url": "http://h/mcp", "timeout": 0}, "timeout"),
    ({"name": "x", "url": "http://h/mcp", "bogus": 1}, "bogus"),
])
async def test_bad_registration_is_422(app: Lcore, fields: dict[str, Any], text: str) -> None:
    if app.mode != "server":
        pytest.skip("validation does not depend on the mode")
    response = await app.client.post("/v1/mcp-servers", json=fields)
    assert response.status_code == 422, await response.get_data(as_text=True)
    assert text in await response.get_data(as_text=True)
    listing = await (await app.client.get("/v1/mcp-servers")).get_json()
    assert [s["name"] for s in listing["servers"]] == ["weather"]


async def test_registrations_are_bounded(app: Lcore) -> None:
    if app.mode != "server":
        pytest.skip("the bound does not depend on the mode")
    names = [f"bulk-{i}" for i in range(MAX_RUNTIME_SERVERS)]
    try:
        for name in names:
            response = await app.client.post("/v1/mcp-servers", json={
                "name": name, "url": "http://127.0.0.1:9/mcp"})
            assert response.status_code == 201
        over = await app.client.post("/v1/mcp-servers", json={"name": "one-too-many",
                                                               "url": "http://127.0.0.1:9/mcp"})
        assert over.status_code == 422
        assert str(MAX_RUNTIME_SERVERS) in (await over.get_json())["detail"]["cause"]
    finally:
        for name in names:
            await app.client.delete(f"/v1/mcp-servers/{name}")
    ok = await app.client.post("/v1/mcp-servers", json={"name": "one-too-many",
                                                        "url": "http://127.0.0.1:9/mcp"})
    assert ok.status_code == 201
    await app.client.delete("/v1/mcp-servers/one-too-many")


ROUTES = {"list_mcp_servers": ("GET", "/v1/mcp-servers", None),
          "register_mcp_server": ("POST", "/v1/mcp-servers",
                                  {"name": "denied", "url": "http://127.0.0.1:9/mcp"}),
          "delete_mcp_server": ("DELETE", "/v1/mcp-servers/denied", None)}


@pytest.mark.parametrize("withheld", sorted(ROUTES))
async def test_each_route_needs_its_action(tmp_path: Path, llama_stack_server: Any,
                                           withheld: str) -> None:
    granted = [a for a in ROUTES if a != withheld]
    config = lcore_config(tmp_path, "server", llama_stack_server.url, authorization={
        "always_apply_access_rules": True,  # noop's callers are not judged otherwise
        "access_rules": [{"role": "*", "actions": granted}]})
    lcore_app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(lcore_app) as test_app:
        client = test_app.test_client()
        for action, (method, path, body) in ROUTES.items():
            response = await client.open(path, method=method, json=body)
            if action == withheld:
                assert response.status_code == 403, (method, path)
                assert (await response.get_json())["detail"]["response"] == \
                    "User does not have permission to access this endpoint"
            else:
                assert response.status_code in (200, 201), (method, path)
