"""MCP authorization from every configured source kind, a server with two tools, a value kind
added by a third-party plugin, and the config errors of `mcp_servers`.

Each server is a real MCP server (the `mcp` SDK) that records the headers Llama Stack sends it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.config import load_config
from lcore_core.errors import ConfigError
from lcore_core.hookspecs import hookimpl
from lcore_core.plugins import load_plugins
from lcore_core.testing.mcp_server import MCPTestServer

from .support import Lcore, lcore_config, started

pytestmark = pytest.mark.e2e

FILE_TOKEN = f"file-token-{uuid.uuid4().hex[:8]}"
ENV_TOKEN = f"env-token-{uuid.uuid4().hex[:8]}"
LITERAL_TOKEN = f"literal-token-{uuid.uuid4().hex[:8]}"
VAULT_TOKEN = f"vault-token-{uuid.uuid4().hex[:8]}"
ENV_NAME = "LCORE_TEST_MCP_SOURCE_TOKEN"
SOURCE_KINDS = ("file", "env", "literal", "vault")


def convert_units(celsius: float) -> str:
    """The second tool of the two-tool server."""
    return f"{celsius} C is {celsius * 9 / 5 + 32:.1f} F"


class VaultValues:
    """A third party's header value kind: `vault:<name>` (here a fixed table)."""

    @hookimpl
    def lcore_mcp_header_value(self, spec: str) -> str | None:
        if spec.startswith("vault:"):
            return {"vault:mcp-token": VAULT_TOKEN}.get(spec)
        return None


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, MCPTestServer]]:
    """One server per source kind; each offers its own tool name (Llama Stack refuses two
    servers offering one name in a call)."""
    def echo(kind: str) -> Callable[[str], str]:
        return lambda q: f"{kind} tool saw {q}"

    made = {kind: MCPTestServer(name=f"from-{kind}", weather=False,
                                tools={f"{kind}_tool": echo(kind)}) for kind in SOURCE_KINDS}
    made["two"] = MCPTestServer(name="two-tools", tools={"convert_units": convert_units})
    for server in made.values():
        server.start()
    try:
        yield made
    finally:
        for server in made.values():
            server.stop()


@pytest.fixture(scope="module")
async def lcore(tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any,
                servers: dict[str, MCPTestServer]) -> AsyncIterator[Lcore]:
    workdir = tmp_path_factory.mktemp("mcp-sources")
    token_file = workdir / "mcp-token"
    token_file.write_text(FILE_TOKEN + "\n")
    config = [
        {"name": "file", "url": servers["file"].url,
         "authorization_headers": {"Authorization": str(token_file)}},
        {"name": "env", "url": servers["env"].url,
         "authorization_headers": {"Authorization": "${env." + ENV_NAME + "}"}},
        {"name": "literal", "url": servers["literal"].url,
         "authorization_headers": {"Authorization": f"Bearer {LITERAL_TOKEN}"}},
        {"name": "vault", "url": servers["vault"].url,
         "authorization_headers": {"Authorization": "vault:mcp-token"}},
        {"name": "two", "url": servers["two"].url},
    ]
    os.environ[ENV_NAME] = ENV_TOKEN
    try:
        app = create_app(lcore_config(workdir, "server", llama_stack_server.url,
                                      mcp_servers=config),
                         plugins=load_plugins(entrypoints=False, extra=[VaultValues()]))
        async with started(app) as test_app:
            yield Lcore(app, test_app.test_client(), "server", workdir)
    finally:
        del os.environ[ENV_NAME]


@pytest.mark.parametrize("kind, tool, token", [
    ("file", "file_tool", FILE_TOKEN),
    ("env", "env_tool", ENV_TOKEN),
    ("literal", "literal_tool", LITERAL_TOKEN),
    ("vault", "vault_tool", VAULT_TOKEN),  # the kind a plugin added
])
async def test_authorization_reaches_the_server_from_each_source(
        lcore: Lcore, llm: Any, servers: dict[str, MCPTestServer], kind: str, tool: str,
        token: str) -> None:
    server = servers[kind]
    server.reset()
    question = f"use the {kind} tool {uuid.uuid4().hex[:6]}"
    llm.script(question, tool_call=(tool, {"q": kind}), then="Tool said: {tool_output}")
    response = await lcore.client.post("/v2/query", json={"query": question,
                                                          "generate_topic_summary": False})
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert f"{kind} tool saw {kind}" in body["response"]
    assert [c.name for c in server.tool_calls] == [tool]
    # Every MCP request (a streamable-HTTP client accepts text/event-stream; LCore's own
    # reachability probe is a bare GET) carried the configured token, as Bearer.
    protocol = [h for h in server.request_headers if "text/event-stream" in h.get("accept", "")]
    assert protocol
    assert {h.get("authorization") for h in protocol} == {f"Bearer {token}"}
    # No other server saw this token.
    for other, other_server in servers.items():
        if other != kind:
            assert all(h.get("authorization") != f"Bearer {token}"
                       for h in other_server.request_headers)


async def test_both_tools_of_one_server_are_offered_and_callable(
        lcore: Lcore, llm: Any, servers: dict[str, MCPTestServer]) -> None:
    servers["two"].reset()
    question = f"convert and weather {uuid.uuid4().hex[:6]}"
    llm.script(question, tool_calls=[("get_weather", {"city": "Oslo"}),
                                     ("convert_units", {"celsius": 21})],
               then="Both: {tool_output}")
    response = await lcore.client.post("/v2/query", json={"query": question,
                                                          "generate_topic_summary": False})
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert "C is 69.8 F" in body["response"] and "Oslo" in body["response"]
    assert sorted(c.name for c in servers["two"].tool_calls) == ["convert_units", "get_weather"]
    offered = next(r for r in llm.chat_requests if question in r.text).tool_names
    assert {"get_weather", "convert_units"} <= set(offered)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/mcp", "file:///etc/passwd", "127.0.0.1:9/mcp"])
def test_an_mcp_url_must_be_http_or_https(tmp_path: Path, url: str) -> None:
    path = lcore_config(tmp_path, "server", "http://127.0.0.1:9",
                        mcp_servers=[{"name": "bad", "url": url}])
    with pytest.raises(ConfigError) as failure:
        load_config(path, load_plugins(entrypoints=False))
    message = str(failure.value)
    assert str(path) in message and "mcp_servers" in message and "url" in message
