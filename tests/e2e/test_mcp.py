"""MCP tools through the pipeline: a real MCP server, headers resolved per request."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.mcp_server import weather_report

from .support import MODES, Lcore, lcore_config, started

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
                "authorization_headers": {"X-Api-Key": str(secret_file),
                                          "Authorization": "client"}}]
    llama = llama_stack_server.url if mode == "server" else llama_stack_library_config
    app = create_app(lcore_config(workdir, mode, llama, mcp_servers=servers),
                     plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        yield Lcore(app, test_app.test_client(), mode, workdir)


async def test_mcp_tool_runs_with_resolved_headers(mcp_lcore: Lcore, llm: Any,
                                                   mcp_server: Any) -> None:
    llm.script("weather in brno", tool_call=("get_weather", {"city": "Brno"}),
               then="Weather: {tool_output}")
    headers = {"MCP-HEADERS": json.dumps({"weather": {"Authorization": "Bearer client-tok"}})}
    response = await mcp_lcore.client.post(
        "/v2/query", json={"query": "weather in brno", "generate_topic_summary": False},
        headers=headers)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert weather_report("Brno") in body["response"]
    assert [c["name"] for c in body["tool_calls"]] == ["get_weather"]
    assert body["tool_calls"][0]["args"] == {"city": "Brno"}
    assert body["tool_results"][0]["status"] == "success"
    assert weather_report("Brno") in body["tool_results"][0]["content"]
    calls = [c for c in mcp_server.tool_calls if c.name == "get_weather"]
    assert calls and calls[-1].arguments == {"city": "Brno"}
    sent = {k.lower(): v for k, v in calls[-1].headers.items()}
    assert sent["x-api-key"] == SECRET
    assert sent["authorization"] == "Bearer client-tok"


async def test_malformed_mcp_headers_is_400(mcp_lcore: Lcore, llm: Any) -> None:
    for raw, text in (("{not json", "not valid JSON"), ('{"nope": {}}', "unknown MCP server"),
                      ('["x"]', "expected a JSON object")):
        response = await mcp_lcore.client.post("/v2/query", json={"query": "hi"},
                                               headers={"MCP-HEADERS": raw})
        assert response.status_code == 400
        assert text in (await response.get_json())["detail"]["cause"]
