"""MCP authorization headers that depend on the caller: `oauth` (a token the client obtained from
the MCP server's authorization server, else upstream's 401 relaying the server's challenge) and
`kubernetes` (the caller's bearer token) with `noop-with-token`. Real MCP servers on loopback,
the real Llama Stack (server mode)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.mcp_server import MCPTestServer, weather_report

from .support import Lcore, lcore_config, started

TOKEN = "oauth-access-token-3141"
UNAUTHORIZED = "Missing or invalid credentials provided by client"
QUERY = {"query": "secure weather", "generate_topic_summary": False}


@pytest.fixture(scope="module")
def oauth_mcp() -> Iterator[MCPTestServer]:
    """An MCP server that accepts only `Bearer TOKEN` (the mcp SDK's bearer middleware)."""
    with MCPTestServer(name="secure-mcp", bearer_token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def challenge(oauth_mcp: MCPTestServer) -> str:
    """What the MCP server itself answers a request without a token."""
    response = httpx.get(oauth_mcp.url)
    assert response.status_code == 401
    value = response.headers["WWW-Authenticate"]
    assert value.startswith("Bearer ") and "resource_metadata=" in value
    return value


def app_for(workdir: Path, llama: str, servers: list[dict[str, Any]], **extra: Any) -> Any:
    return create_app(lcore_config(workdir, "server", llama, mcp_servers=servers, **extra),
                      plugins=load_plugins(entrypoints=False))


@pytest.fixture(scope="module")
async def oauth_lcore(tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any,
                      oauth_mcp: MCPTestServer) -> AsyncIterator[Lcore]:
    workdir = tmp_path_factory.mktemp("mcp-oauth")
    servers = [{"name": "secure", "url": oauth_mcp.url,
                "authorization_headers": {"Authorization": "oauth"}}]
    app = app_for(workdir, llama_stack_server.url, servers)
    async with started(app) as test_app:
        yield Lcore(app, test_app.test_client(), "server", workdir)


def mcp_headers(value: str) -> dict[str, str]:
    return {"MCP-HEADERS": json.dumps({"secure": {"Authorization": value}})}


async def test_no_token_is_401_with_the_servers_challenge(oauth_lcore: Lcore, challenge: str,
                                                         oauth_mcp: MCPTestServer,
                                                         llm: Any) -> None:
    expected = {"detail": {"response": UNAUTHORIZED,
                           "cause": f"MCP server at {oauth_mcp.url} requires OAuth"}}
    for method, path, kwargs in (("POST", "/v2/query", {"json": QUERY}),
                                 ("POST", "/v2/streaming_query", {"json": QUERY}),
                                 ("POST", "/v1/query", {"json": QUERY}),
                                 ("GET", "/v1/tools", {})):
        response = await oauth_lcore.client.open(path, method=method, **kwargs)
        assert response.status_code == 401, (path, await response.get_data(as_text=True))
        assert await response.get_json() == expected, path
        assert response.headers["WWW-Authenticate"] == challenge, path
    assert not any("secure weather" in r.text for r in llm.chat_requests)


async def test_rejected_token_is_401_as_well(oauth_lcore: Lcore, challenge: str,
                                             oauth_mcp: MCPTestServer) -> None:
    oauth_mcp.reset()
    response = await oauth_lcore.client.post("/v2/query", json=QUERY,
                                             headers=mcp_headers("Bearer expired-token"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge
    # The probe carried the client's token, as the tool call would have.
    assert [h["authorization"] for h in oauth_mcp.request_headers
            if "authorization" in h] == ["Bearer expired-token"]


async def test_the_clients_token_reaches_the_mcp_server(oauth_lcore: Lcore, llm: Any,
                                                        oauth_mcp: MCPTestServer) -> None:
    oauth_mcp.reset()
    llm.script("secure weather", tool_call=("get_weather", {"city": "Turku"}),
               then="Weather: {tool_output}")
    for value in (f"Bearer {TOKEN}", TOKEN):  # the scheme is optional, as upstream
        response = await oauth_lcore.client.post("/v2/query", json=QUERY,
                                                 headers=mcp_headers(value))
        assert response.status_code == 200, await response.get_data(as_text=True)
        assert weather_report("Turku") in (await response.get_json())["response"]
    calls = oauth_mcp.tool_calls
    assert len(calls) == 2
    assert {c.headers["authorization"] for c in calls} == {f"Bearer {TOKEN}"}
    # (LCore's own reachability probe asks without credentials.)
    assert {h.get("authorization") for h in oauth_mcp.request_headers} <= {f"Bearer {TOKEN}",
                                                                           None}


async def test_no_tools_needs_no_token(oauth_lcore: Lcore, llm: Any) -> None:
    response = await oauth_lcore.client.post("/v2/query", json={**QUERY, "no_tools": True})
    assert response.status_code == 200, await response.get_data(as_text=True)


async def test_unreachable_oauth_server_is_401_without_a_challenge(
        tmp_path: Path, llama_stack_server: Any) -> None:
    url = "http://127.0.0.1:9/mcp"
    servers = [{"name": "secure", "url": url,
                "authorization_headers": {"Authorization": "oauth"}}]
    app = app_for(tmp_path, llama_stack_server.url, servers,
                  service={"host": "127.0.0.1", "port": 8080, "skip_unreachable_mcp": True})
    async with started(app) as test_app:
        response = await test_app.test_client().post("/v2/query", json=QUERY)
    assert response.status_code == 401
    assert await response.get_json() == {"detail": {
        "response": UNAUTHORIZED, "cause": f"MCP server at {url} requires OAuth"}}
    assert "WWW-Authenticate" not in response.headers


async def test_kubernetes_header_forwards_the_noop_with_token_callers_token(
        tmp_path: Path, llama_stack_server: Any, mcp_server: MCPTestServer, llm: Any) -> None:
    servers = [{"name": "cluster", "url": mcp_server.url,
                "authorization_headers": {"Authorization": "kubernetes",
                                          "X-Cluster-Token": "kubernetes"}}]
    app = app_for(tmp_path, llama_stack_server.url, servers,
                  authentication={"module": "noop-with-token"})
    llm.script("cluster forecast", tool_call=("get_weather", {"city": "Kiruna"}),
               then="Done: {tool_output}")
    async with started(app) as test_app:
        response = await test_app.test_client().post(
            "/v2/query", headers={"Authorization": "Bearer caller-token-77"},
            json={"query": "cluster forecast", "generate_topic_summary": False})
        assert response.status_code == 200, await response.get_data(as_text=True)
    calls = [c for c in mcp_server.tool_calls if c.arguments == {"city": "Kiruna"}]
    assert calls, "the MCP tool was not called"
    assert calls[-1].headers["authorization"] == "Bearer caller-token-77"
    assert calls[-1].headers["x-cluster-token"] == "Bearer caller-token-77"


@pytest.mark.parametrize("authentication", [
    {"module": "noop"}, {"module": "api-key-token", "api_key_config": {"api_key": "k"}}])
def test_kubernetes_header_server_left_out_for_other_modules(
        tmp_path: Path, authentication: dict[str, Any]) -> None:
    """As upstream: without a caller token to forward, the server is left out (warned)."""
    servers = [{"name": "cluster", "url": "http://127.0.0.1:9/mcp",
                "authorization_headers": {"Authorization": "kubernetes"}},
               {"name": "plain", "url": "http://127.0.0.1:9/mcp"}]
    app = app_for(tmp_path, "http://127.0.0.1:9", servers, authentication=authentication)
    config = app.runtime.config
    assert [s.name for s in config.mcp_servers] == ["plain"]
    [warning] = config.warnings
    assert "mcp_servers[0].authorization_headers.Authorization" in warning
    assert "MCP server 'cluster' is left out" in warning


@pytest.mark.parametrize("source", ["file", "client", "kubernetes"])
async def test_a_token_the_server_rejects_is_401_whatever_its_source(
        tmp_path: Path, llama_stack_server: Any, oauth_mcp: MCPTestServer, llm: Any,
        source: str) -> None:
    """mcp.feature, "...reports error when MCP <file-based|client-provided|kubernetes> invalid
    auth token is passed": as for an OAuth server, a token from a file, from MCP-HEADERS or the
    caller's own that the MCP server refuses is a 401 `MCP server at <url> requires OAuth`,
    for tools, query and streaming_query alike (upstream probes every server that gets an
    Authorization header), with the server's challenge."""
    token_file = tmp_path / "mcp-token"
    token_file.write_text("invalid-mcp-token")
    spec = {"file": str(token_file), "client": "client", "kubernetes": "kubernetes"}[source]
    servers = [{"name": "mcp-auth", "url": oauth_mcp.url,
                "authorization_headers": {"Authorization": spec}}]
    headers = {"Authorization": "Bearer kubernetes-invalid-token"}
    if source == "client":
        headers["MCP-HEADERS"] = json.dumps({"mcp-auth": {"Authorization": "Bearer nope"}})
    app = app_for(tmp_path, llama_stack_server.url, servers,
                  authentication={"module": "noop-with-token"})
    expected = {"detail": {"response": UNAUTHORIZED,
                           "cause": f"MCP server at {oauth_mcp.url} requires OAuth"}}
    async with started(app) as test_app:
        client = test_app.test_client()
        for method, path, body in (("GET", "/v1/tools", None), ("POST", "/v1/query", QUERY),
                                   ("POST", "/v1/streaming_query", QUERY)):
            answer = await client.open(path, method=method, json=body, headers=headers)
            assert answer.status_code == 401, (path, await answer.get_data(as_text=True))
            assert await answer.get_json() == expected, path
            assert answer.headers["WWW-Authenticate"].startswith("Bearer ")
        # the right token still works
        good = {**headers, "Authorization": f"Bearer {TOKEN}"}
        if source == "file":
            token_file.write_text(TOKEN)
        if source == "client":
            good["MCP-HEADERS"] = json.dumps({"mcp-auth": {"Authorization": f"Bearer {TOKEN}"}})
        answer = await client.get("/v1/tools", headers=good)
        assert answer.status_code == 200, await answer.get_data(as_text=True)


async def test_an_accepted_token_is_not_asked_again_on_every_call(
        oauth_lcore: Lcore, oauth_mcp: MCPTestServer) -> None:
    """Upstream probes the MCP server before every call; LCore remembers for a while that the
    server accepted this token (a refused one is asked again each time, and stays a 401)."""
    def probes(token: str) -> int:  # the probe: a GET outside any MCP session
        return sum(1 for method, headers in oauth_mcp.requests
                   if method == "GET" and "mcp-session-id" not in headers
                   and headers.get("authorization") == f"Bearer {token}")

    before = probes(TOKEN)
    for _ in range(3):
        answer = await oauth_lcore.client.get("/v1/tools", headers=mcp_headers(TOKEN))
        assert answer.status_code == 200, await answer.get_data(as_text=True)
    assert probes(TOKEN) - before <= 1  # asked at most once (an earlier test may have asked)
    for expected in (1, 2):
        answer = await oauth_lcore.client.get("/v1/tools", headers=mcp_headers("Bearer wrong"))
        assert answer.status_code == 401
        assert probes("wrong") == expected
