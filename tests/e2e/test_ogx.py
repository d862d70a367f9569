"""LCore against a real OGX 1.x server (Llama Stack's successor) over TLS: backend detection,
queries, streaming, conversations, MCP tools, RAG and the missing safety API.

The rest of the e2e suite runs against OGX too (the `ogx` mode in support.MODES); this module
checks what is OGX-specific. One OGX server per session (the `ogx_server` fixture).
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.llama import SAFETY_UNAVAILABLE
from lcore_core.plugins import load_plugins
from lcore_core.testing.llama_stack import LLM_MODEL_ID, free_port
from lcore_core.testing.llm import UNSAFE_MARKER
from lcore_core.testing.mcp_server import weather_report
from lcore_core.testing.ogx import OgxServer, ogx_available, write_ogx_run_yaml

from .support import Lcore, lcore_config, links, started

pytestmark = [pytest.mark.e2e, pytest.mark.ogx,
              pytest.mark.skipif(not ogx_available(), reason="make install-ogx not run")]

SSN = "123-45-6789"
# LCore's own shields work whatever the backend.
SHIELDS = [{"name": "pii", "provider_id": "redaction", "config": {"rules": [
    {"pattern": r"\b\d{3}-\d{2}-\d{4}\b", "replacement": "[SSN]"}]}}]


@pytest.fixture(scope="module")
async def ogx_lcore(tmp_path_factory: pytest.TempPathFactory, ogx_server: Any,
                    mcp_test_server: Any) -> AsyncIterator[tuple[Lcore, list[str]]]:
    """LCore with `backend: auto` in front of OGX, with an MCP server and a redaction shield;
    also the start-up's log messages (for the one safety warning)."""
    workdir = tmp_path_factory.mktemp("ogx-lcore")
    config = lcore_config(
        workdir, "ogx", ogx_server, shields=SHIELDS,
        mcp_servers=[{"name": "weather", "url": mcp_test_server.url}])
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect()
    logging.getLogger().addHandler(handler)
    try:
        app = create_app(config, plugins=load_plugins(entrypoints=False))
        async with started(app) as test_app:
            logging.getLogger().removeHandler(handler)
            yield Lcore(app, test_app.test_client(), "ogx", workdir), records
            await app.runtime.drain()
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.fixture
def lcore(ogx_lcore: tuple[Lcore, list[str]]) -> Lcore:
    return ogx_lcore[0]


async def test_backend_is_detected_as_ogx_without_safety_api(
        ogx_lcore: tuple[Lcore, list[str]]) -> None:
    lcore, records = ogx_lcore
    assert lcore.runtime.llama.backend == "ogx"
    assert lcore.runtime.llama.has_safety_api is False
    warnings = [r for r in records if SAFETY_UNAVAILABLE in r]
    assert len(warnings) == 1, records


async def test_info_reports_the_ogx_version(lcore: Lcore, ogx_server: Any) -> None:
    with ogx_server.http_client() as http:
        expected = http.get(f"{ogx_server.url}/v1/version").json()["version"]
    assert expected.split(".")[0] >= "1"
    body = await (await lcore.client.get("/v1/info")).get_json()
    assert body["llama_stack_version"] == expected


async def test_query_answers_and_the_unsafe_marker_is_not_refused(lcore: Lcore,
                                                                  llm: Any) -> None:
    """No Llama Guard: a question Llama Guard would refuse is answered (degraded, not failed)."""
    response = await lcore.query(f"tell me {UNSAFE_MARKER}", generate_topic_summary=False)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert body["response"].startswith("Scripted answer")
    assert not any(r.is_guard_check for r in llm.chat_requests)  # Llama Guard never asked
    assert [r.body["model"] for r in llm.chat_requests] == [LLM_MODEL_ID.split("/", 1)[1]]
    assert (await (await lcore.client.get("/v1/shields")).get_json())["shields"][0][
        "identifier"] == "pii"


async def test_lcore_shields_still_redact(lcore: Lcore, llm: Any) -> None:
    response = await lcore.query(f"my number is {SSN}", generate_topic_summary=False)
    assert response.status_code == 200
    sent = " ".join(str(r.messages) for r in llm.chat_requests)
    assert SSN not in sent and "[SSN]" in sent


async def test_unknown_llama_stack_shield_is_404(lcore: Lcore, llm: Any) -> None:
    response = await lcore.query("hi", shield_ids=["llama-guard"])
    assert response.status_code == 404


async def test_stream_and_conversation_continue(lcore: Lcore, llm: Any) -> None:
    status, events = await lcore.stream("first question", generate_topic_summary=False)
    assert status == 200
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"
    conversation_id = events[0]["data"]["conversation_id"]
    tokens = "".join(e["data"]["token"] for e in events if e["event"] == "token")
    assert tokens.startswith("Scripted answer to: first question")
    second = await lcore.query("second question", conversation_id=conversation_id,
                               generate_topic_summary=False)
    assert second.status_code == 200
    assert "(user turns: 2; first: first question)" in (await second.get_json())["response"]
    stored = await (await lcore.client.get(f"/v1/conversations/{conversation_id}")).get_json()
    assert len(stored["chat_history"]) == 2


async def test_mcp_tool_runs_through_ogx(lcore: Lcore, llm: Any, mcp_server: Any) -> None:
    llm.script("weather in oslo", tool_call=("get_weather", {"city": "Oslo"}),
               then="Weather: {tool_output}")
    response = await lcore.query("weather in oslo", generate_topic_summary=False)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert weather_report("Oslo") in body["response"]
    # the MCP server's tool listing first, as upstream reports it
    assert [c["name"] for c in body["tool_calls"]] == ["mcp_list_tools", "get_weather"]
    assert any(c.arguments == {"city": "Oslo"} for c in mcp_server.tool_calls)


async def test_file_search_over_a_vector_store(lcore: Lcore, llm: Any) -> None:
    client = lcore.runtime.llama.client
    upload = io.BytesIO(b"OGX keeps the Responses API of Llama Stack and drops safety.")
    upload.name = "ogx.txt"
    file = await client.files.create(file=upload, purpose="assistants")
    store = await client.vector_stores.create(name=f"ogx-{uuid.uuid4().hex[:6]}")
    attached = await client.vector_stores.files.create(
        vector_store_id=store.id, file_id=file.id,
        attributes={"title": "OGX notes", "url": "https://example.com/ogx"})
    assert attached.status == "completed", attached
    llm.script("what does ogx drop", tool_call=("file_search", {"query": "ogx safety"}),
               then="Docs: {tool_output}")
    response = await lcore.query("what does ogx drop", vector_store_ids=[store.id],
                                 generate_topic_summary=False)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert "drops safety" in body["response"]
    assert {"doc_title": "OGX notes", "doc_url": "https://example.com/ogx"} in links(
        body["referenced_documents"])


async def test_degraded_start_then_ogx_arrives(tmp_path: Any, llm: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The safety probe could not run at start-up (nothing listening): the first query that
    reaches OGX finds no safety API, warns once and answers without Llama Stack shields."""
    server = OgxServer(write_ogx_run_yaml(tmp_path / "ogx", llm.base_url), port=free_port())
    config = lcore_config(tmp_path / "lcore", "ogx", server,
                          llama_stack={"url": server.url, "ca_cert_path": str(server.ca_cert),
                                       "max_retries": 1, "retry_delay": 1,
                                       "allow_degraded_mode": True})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    try:
        with caplog.at_level(logging.WARNING, logger="lcore.llama"):
            async with started(app) as test_app:
                client = test_app.test_client()
                assert app.runtime.degraded is not None
                await asyncio.to_thread(server.start)
                for question in ("first after the start", "second after the start"):
                    answer = await client.post("/v2/query", json={
                        "query": question, "generate_topic_summary": False})
                    assert answer.status_code == 200, await answer.get_data(as_text=True)
                assert app.runtime.llama.has_safety_api is False
                await app.runtime.drain()
        assert sum(SAFETY_UNAVAILABLE in r.getMessage() for r in caplog.records) == 1
    finally:
        await asyncio.to_thread(server.stop)
