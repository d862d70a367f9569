"""LCore in library mode on OGX 1.x: `lcore serve` from OGX's venv (`make install-ogx`), OGX's
application in LCore's process, driven over HTTP.

The scripted LLM (this venv) is OGX's OpenAI-compatible provider and the MCP test server (this
venv's mcp 1.x SDK) is reached by OGX's mcp 2.x client: both on loopback.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lcore_core.llama import SAFETY_UNAVAILABLE
from lcore_core.testing.llama_stack import LLM_MODEL_ID
from lcore_core.testing.llm import UNSAFE_MARKER
from lcore_core.testing.mcp_server import weather_report
from lcore_core.testing.ogx import ogx_environment, ogx_python, write_ogx_run_yaml
from tests.reliability.support import LcoreProcess

from .support import links, parse_sse
from .test_skills import GREETER_BODY, write_skills

OGX_LCORE = ogx_python().with_name("lcore")

pytestmark = [pytest.mark.e2e, pytest.mark.ogx,
              pytest.mark.skipif(not OGX_LCORE.exists(), reason="make install-ogx not run")]

SSN = "123-45-6789"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, scripted_llm: Any,
           mcp_test_server: Any) -> Iterator[LcoreProcess]:
    """`lcore serve` from OGX's venv, library mode with `backend: auto` (Llama Stack's library
    is not installed there, OGX is), an MCP server and a redaction shield."""
    workdir = tmp_path_factory.mktemp("ogx-library")
    run_yaml = write_ogx_run_yaml(workdir / "ogx", scripted_llm.base_url)
    config = {
        "name": "lcore-e2e-ogx-library",
        "service": {"host": "127.0.0.1", "port": 8080},
        "llama_stack": {"use_as_library_client": True,
                        "library_client_config_path": str(run_yaml)},
        "authentication": {"module": "noop"},
        "database": {"sqlite": {"db_path": str(workdir / "user.db")}},
        "conversation_cache": {"type": "memory", "memory": {"max_entries": 100}},
        "mcp_servers": [{"name": "weather", "url": mcp_test_server.url}],
        # LCore's skill tools: its own MCP server (mcp 2.x here) on loopback.
        "skills": {"paths": [str(write_skills(workdir))]},
        "shields": [{"name": "pii", "provider_id": "redaction", "config": {"rules": [
            {"pattern": r"\b\d{3}-\d{2}-\d{4}\b", "replacement": "[SSN]"}]}}],
    }
    path = workdir / "lightspeed-stack.yaml"
    path.write_text(yaml.safe_dump(config))
    process = LcoreProcess(path, name="lcore-ogx-library", executable=OGX_LCORE,
                           env=ogx_environment(workdir / "ogx"))
    try:
        process.start().wait_ready(timeout=180)
        yield process
    finally:
        process.stop()


@pytest.fixture
def http(served: LcoreProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=120, trust_env=False) as client:
        yield client


def ask(http: httpx.Client, question: str, **fields: Any) -> dict[str, Any]:
    response = http.post("/v2/query", json={"query": question,
                                            "generate_topic_summary": False, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def test_ogx_runs_in_process_and_warns_once_about_shields(served: LcoreProcess,
                                                          http: httpx.Client) -> None:
    log = Path(served.log_path).read_text(errors="replace")
    assert log.count(SAFETY_UNAVAILABLE) == 1, served.log_tail(80)
    assert '"mode": "library", "backend": "ogx"' in log, served.log_tail(80)
    info = http.get("/v1/info").json()
    assert info["llama_stack_version"].split(".")[0] >= "1"
    assert http.get("/readiness").status_code == 200


def test_query_is_answered_without_llama_guard(http: httpx.Client, llm: Any) -> None:
    body = ask(http, f"tell me {UNSAFE_MARKER}")
    assert body["response"].startswith("Scripted answer")
    assert not any(r.is_guard_check for r in llm.chat_requests)
    assert [r.body["model"] for r in llm.chat_requests] == [LLM_MODEL_ID.split("/", 1)[1]]


def test_lcore_shields_still_redact(http: httpx.Client, llm: Any) -> None:
    ask(http, f"my number is {SSN}")
    sent = " ".join(str(r.messages) for r in llm.chat_requests)
    assert SSN not in sent and "[SSN]" in sent


def test_stream_then_conversation_continues(http: httpx.Client, llm: Any) -> None:
    response = http.post("/v2/streaming_query", json={"query": "first question",
                                                      "generate_topic_summary": False})
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"
    tokens = "".join(e["data"]["token"] for e in events if e["event"] == "token")
    assert tokens.startswith("Scripted answer to: first question")
    conversation_id = events[0]["data"]["conversation_id"]
    second = ask(http, "second question", conversation_id=conversation_id)
    assert "(user turns: 2; first: first question)" in second["response"]
    stored = http.get(f"/v1/conversations/{conversation_id}").json()
    assert len(stored["chat_history"]) == 2


def test_mcp_tool_call_reaches_the_mcp_server(http: httpx.Client, llm: Any,
                                              mcp_server: Any) -> None:
    llm.script("weather in oslo", tool_call=("get_weather", {"city": "Oslo"}),
               then="Weather: {tool_output}")
    body = ask(http, "weather in oslo")
    assert weather_report("Oslo") in body["response"]
    # the MCP server's tool listing first, as upstream reports it
    assert [c["name"] for c in body["tool_calls"]] == ["mcp_list_tools", "get_weather"]
    assert any(c.arguments == {"city": "Oslo"} for c in mcp_server.tool_calls)


def test_tools_lists_the_mcp_servers_tools_with_the_mcp_2_client(
        http: httpx.Client, mcp_server: Any) -> None:
    response = http.get("/v1/tools")
    assert response.status_code == 200, response.text
    tools = response.json()["tools"]
    weather = next(t for t in tools if t["identifier"] == "get_weather")
    assert weather["toolgroup_id"] == "weather" and weather["server_source"] == mcp_server.url
    assert [(p["name"], p["required"]) for p in weather["parameters"]] == [("city", True)]


def test_skill_tool_served_by_lcore_over_mcp_2(http: httpx.Client, llm: Any) -> None:
    llm.script("greet the crew", tool_call=("load_skill", {"skill_name": "greeter"}),
               then="Loaded: {tool_output}")
    body = ask(http, "please greet the crew")
    assert "AHOY-7731" in body["response"]
    # besides the configured MCP server's tool listing (the skills server's is not shown)
    (result,) = [r for r in body["tool_results"] if r["type"] != "mcp_list_tools"]
    assert result["status"] == "success" and GREETER_BODY in result["content"]


def test_file_search_over_a_vector_store(http: httpx.Client, llm: Any) -> None:
    uploaded = http.post("/v1/files", files={"file": (
        "ogx.txt", b"OGX in process keeps the Responses API and drops safety.", "text/plain")})
    assert uploaded.status_code == 200, uploaded.text
    store = http.post("/v1/vector-stores", json={"name": f"ogx-{uuid.uuid4().hex[:6]}"})
    assert store.status_code == 200, store.text
    store_id = store.json()["id"]
    attached = http.post(f"/v1/vector-stores/{store_id}/files", json={
        "file_id": uploaded.json()["id"],
        "attributes": {"title": "OGX notes", "url": "https://example.com/ogx"}})
    assert attached.status_code == 200, attached.text
    assert attached.json()["status"] == "completed", attached.text
    llm.script("what does ogx drop", tool_call=("file_search", {"query": "ogx safety"}),
               then="Docs: {tool_output}")
    body = ask(http, "what does ogx drop", vector_store_ids=[store_id])
    assert "drops safety" in body["response"]
    assert {"doc_title": "OGX notes", "doc_url": "https://example.com/ogx"} in links(
        body["referenced_documents"])


def test_ogx_refusal_in_process_is_upstreams_404(http: httpx.Client) -> None:
    """OGX (in process) refuses an unknown vector store: LCore's error body, not a traceback."""
    store_id = f"vs_{uuid.uuid4()}"
    response = http.get(f"/v1/vector-stores/{store_id}")
    assert response.status_code == 404, response.text
    assert store_id in response.json()["detail"]["cause"]
