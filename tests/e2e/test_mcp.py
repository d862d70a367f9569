"""MCP tools through the pipeline: a real MCP server, headers resolved per request."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart.testing.app import LifespanError

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.mcp_server import weather_report

from .support import MODES, Lcore, backend_for, lcore_config, parse_sse, started

SECRET = "file-secret-4711"


@pytest.fixture(scope="module", params=MODES)
async def mcp_lcore(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    llama_stack_server: Any, llama_stack_library_config: Path,
                    mcp_test_server: Any) -> AsyncIterator[Lcore]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"mcp-{mode}")
    secret_file = workdir / "api-key"
    secret_file.write_text(SECRET + "\n")
    servers = [{"name": "weather", "url": mcp_test_server.url,
                "headers": ["X-Forward-Me"],
                "authorization_headers": {"X-Api-Key": str(secret_file),
                                          "Authorization": "client",
                                          "X-Env-Token": "${env.LCORE_TEST_MCP_TOKEN}",
                                          "X-Literal": "literal-value"}}]
    llama = backend_for(request, mode, llama_stack_server, llama_stack_library_config)
    os.environ["LCORE_TEST_MCP_TOKEN"] = "env-token-99"
    try:
        app = create_app(lcore_config(workdir, mode, llama, mcp_servers=servers),
                         plugins=load_plugins(entrypoints=False))
    finally:
        del os.environ["LCORE_TEST_MCP_TOKEN"]
    async with started(app) as test_app:
        yield Lcore(app, test_app.test_client(), mode, workdir)


async def test_mcp_tool_runs_with_resolved_headers(mcp_lcore: Lcore, llm: Any,
                                                   mcp_server: Any) -> None:
    llm.script("weather in brno", tool_call=("get_weather", {"city": "Brno"}),
               then="Weather: {tool_output}")
    headers = {"MCP-HEADERS": json.dumps({"weather": {"Authorization": "Bearer client-tok"}}),
               "X-Forward-Me": "forwarded-1", "X-Not-Listed": "private"}
    response = await mcp_lcore.client.post(
        "/v2/query", json={"query": "weather in brno", "generate_topic_summary": False},
        headers=headers)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert weather_report("Brno") in body["response"]
    # As upstream: the server's tools listed (mcp_list_tools), then the call (mcp_call).
    listing, call = body["tool_calls"]
    assert listing == {"id": listing["id"], "name": "mcp_list_tools",
                       "args": {"server_label": "weather"}, "type": "mcp_list_tools"}
    assert (call["name"], call["args"], call["type"]) == (
        "get_weather", {"city": "Brno"}, "mcp_call")
    listed, called = body["tool_results"]
    assert (listed["type"], listed["status"]) == ("mcp_list_tools", "success")
    assert "get_weather" in [t["name"] for t in json.loads(listed["content"])["tools"]]
    assert json.loads(listed["content"])["server_label"] == "weather"
    assert (called["type"], called["status"]) == ("mcp_call", "success")
    assert weather_report("Brno") in called["content"]
    calls = [c for c in mcp_server.tool_calls if c.name == "get_weather"]
    assert calls and calls[-1].arguments == {"city": "Brno"}
    sent = {k.lower(): v for k, v in calls[-1].headers.items()}
    assert sent["x-api-key"] == SECRET  # from a file
    assert sent["authorization"] == "Bearer client-tok"  # from the client
    assert sent["x-env-token"] == "env-token-99"  # from the environment
    assert sent["x-literal"] == "literal-value"  # a literal
    assert sent["x-forward-me"] == "forwarded-1"  # an incoming header listed in `headers`
    assert "x-not-listed" not in sent


async def test_streaming_reports_mcp_tool_events(mcp_lcore: Lcore, llm: Any,
                                                 mcp_server: Any) -> None:
    llm.script("stream weather", tool_call=("get_weather", {"city": "Oslo"}),
               then="Weather: {tool_output}")
    headers = {"MCP-HEADERS": json.dumps({"weather": {"Authorization": "Bearer t"}})}
    response = await mcp_lcore.client.post(
        "/v2/streaming_query", json={"query": "stream weather", "generate_topic_summary": False},
        headers=headers)
    events = parse_sse(await response.get_data(as_text=True))
    calls = [e["data"] for e in events if e["event"] == "tool_call"]
    results = [e["data"] for e in events if e["event"] == "tool_result"]
    assert [(c["name"], c["type"]) for c in calls] == [("mcp_list_tools", "mcp_list_tools"),
                                                        ("get_weather", "mcp_call")]
    assert weather_report("Oslo") in results[-1]["content"]
    tokens = "".join(e["data"]["token"] for e in events if e["event"] == "token")
    assert weather_report("Oslo") in tokens


async def test_client_options_lists_client_headers(mcp_lcore: Lcore) -> None:
    body = await (await mcp_lcore.client.get("/v1/mcp-auth/client-options")).get_json()
    assert body == {"servers": [{"name": "weather", "client_auth_headers": ["Authorization"]}]}


async def test_missing_client_header_is_a_clear_400(mcp_lcore: Lcore, llm: Any) -> None:
    response = await mcp_lcore.client.post(
        "/v2/query", json={"query": "hi"}, headers={"MCP-HEADERS": json.dumps({"weather": {}})})
    assert response.status_code == 400
    cause = (await response.get_json())["detail"]["cause"]
    assert "weather" in cause and "Authorization" in cause


async def test_server_without_client_entry_is_not_offered(mcp_lcore: Lcore, llm: Any) -> None:
    body = await (await mcp_lcore.client.post(
        "/v2/query", json={"query": "no mcp entry", "generate_topic_summary": False})).get_json()
    assert body["response"].startswith("Scripted answer to: no mcp entry")
    asked = [r for r in llm.chat_requests if "no mcp entry" in r.text]
    assert asked and not any("get_weather" in r.tool_names for r in asked)


async def test_malformed_mcp_headers_is_400(mcp_lcore: Lcore, llm: Any) -> None:
    for raw, text in (("{not json", "not valid JSON"), ('{"nope": {}}', "unknown MCP server"),
                      ('["x"]', "expected a JSON object")):
        response = await mcp_lcore.client.post("/v2/query", json={"query": "hi"},
                                               headers={"MCP-HEADERS": raw})
        assert response.status_code == 400
        assert text in (await response.get_json())["detail"]["cause"]


async def test_unreachable_mcp_server_stops_startup(tmp_path: Path, llama_stack_server: Any,
                                                   mcp_test_server: Any) -> None:
    servers = [{"name": "gone", "url": "http://127.0.0.1:9/mcp"},
               {"name": "weather", "url": mcp_test_server.url}]
    app = create_app(lcore_config(tmp_path, "server", llama_stack_server.url,
                                  mcp_servers=servers),
                     plugins=load_plugins(entrypoints=False))
    with pytest.raises(LifespanError) as caught:
        async with started(app):
            pass
    message = str(caught.value)
    assert "MCP server unreachable: gone (http://127.0.0.1:9/mcp)" in message
    assert "weather" not in message

    relaxed = create_app(lcore_config(tmp_path / "relaxed", "server", llama_stack_server.url,
                                      mcp_servers=servers,
                                      service={"skip_unreachable_mcp": True}),
                         plugins=load_plugins(entrypoints=False))
    async with started(relaxed) as test_app:
        ready = await test_app.test_client().get("/readiness")
        body = await ready.get_json()
    assert ready.status_code == 503
    status = {p["provider_id"]: p["status"] for p in body["providers"]}
    assert status["mcp:gone"] == "error" and status["mcp:weather"] == "ok"


async def test_tools_lists_the_mcp_servers_own_tools(mcp_lcore: Lcore, mcp_server: Any) -> None:
    """GET /tools asks the MCP server for its tools, with the caller's resolved headers."""
    headers = {"MCP-HEADERS": json.dumps({"weather": {"Authorization": "Bearer list-tok"}})}
    response = await mcp_lcore.client.get("/v1/tools", headers=headers)
    assert response.status_code == 200
    mcp = [t for t in (await response.get_json())["tools"] if t["source"] == "mcp"]
    weather = next(t for t in mcp if t["identifier"] == "get_weather")
    assert weather["toolgroup_id"] == "weather" and weather["type"] == "tool"
    assert weather["server_source"] == mcp_server.url
    assert weather["description"] == "Current weather for a city."
    assert [(p["name"], p["required"]) for p in weather["parameters"]] == [("city", True)]
    sent = [{k.lower(): v for k, v in h.items()} for h in mcp_server.request_headers]
    assert any(h.get("authorization") == "Bearer list-tok" and h.get("x-api-key") == SECRET
               for h in sent)


async def test_tools_without_client_headers_names_the_server(mcp_lcore: Lcore) -> None:
    body = await (await mcp_lcore.client.get("/v1/tools")).get_json()
    mcp = [t for t in body["tools"] if t["source"] == "mcp"]
    assert mcp == [{"identifier": "weather",
                    "description": "MCP server weather (needs client headers in MCP-HEADERS)",
                    "parameters": [], "provider_id": "model-context-protocol",
                    "toolgroup_id": "weather", "server_source": mcp_lcore.runtime.config
                    .mcp_servers[0].url, "type": "mcp_server", "source": "mcp"}]
    bad = await mcp_lcore.client.get("/v1/tools", headers={"MCP-HEADERS": "{nope"})
    assert bad.status_code == 400
