"""RAG: a file uploaded to a vector store comes back as referenced documents and chunks."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

from .support import Lcore, links

DOC_TEXT = ("LCore plugins are separately installable Python distributions. Each plugin "
            "declares an entry point in the group lcore and implements hooks.")


async def _store_with_document(lcore: Lcore, title: str, url: str) -> str:
    client = lcore.runtime.llama.client
    upload = io.BytesIO(DOC_TEXT.encode())
    upload.name = "plugins.txt"
    file = await client.files.create(file=upload, purpose="assistants")
    store = await client.vector_stores.create(name=f"docs-{uuid.uuid4().hex[:6]}")
    await client.vector_stores.files.create(vector_store_id=store.id, file_id=file.id,
                                            attributes={"title": title, "url": url})
    return store.id


async def test_rag_answer_has_referenced_documents(lcore: Lcore, llm: Any) -> None:
    title, url = "Writing LCore plugins", "https://example.com/lcore/plugins"
    store_id = await _store_with_document(lcore, title, url)
    llm.script("how do plugins work", tool_call=("file_search", {"query": "lcore plugins"}),
               then="From the docs: {tool_output}")
    # No topic summary: its prompt quotes the question, which the scripted rule would match.
    response = await lcore.query("how do plugins work", vector_store_ids=[store_id],
                                 generate_topic_summary=False)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert body["response"].startswith("From the docs:")
    assert "entry point" in body["response"]
    assert {"doc_title": title, "doc_url": url} in links(body["referenced_documents"])
    assert any("separately installable" in c["content"] for c in body["rag_chunks"])
    assert [c["name"] for c in body["tool_calls"]] == ["file_search"]
    # Upstream's types and content for a file search: `file_search_call`, `{"results": [...]}`.
    assert [c["type"] for c in body["tool_calls"]] == ["file_search_call"]
    assert body["tool_results"][0]["type"] == "file_search_call"
    assert list(json.loads(body["tool_results"][0]["content"])) == ["results"]
    offered = [r for r in llm.chat_requests if "file_search" in r.tool_names]
    assert offered, "the file_search tool was not offered to the model"


async def test_rag_streaming_end_event_carries_documents(lcore: Lcore, llm: Any) -> None:
    title, url = "Streaming docs", "https://example.com/lcore/stream"
    store_id = await _store_with_document(lcore, title, url)
    llm.script("stream the plugin docs", tool_call=("file_search", {"query": "plugins"}),
               then="Docs say: {tool_output}")
    status, events = await lcore.stream("stream the plugin docs", vector_store_ids=[store_id],
                                        generate_topic_summary=False)
    assert status == 200
    kinds = [e["event"] for e in events]
    assert "tool_call" in kinds and "tool_result" in kinds, kinds
    end = events[-1]
    assert end["event"] == "end"
    assert {"doc_title": title, "doc_url": url} in links(end["data"]["referenced_documents"])


async def test_no_tools_skips_rag(lcore: Lcore, llm: Any) -> None:
    body = await (await lcore.query("no tools question", no_tools=True)).get_json()
    assert body["response"].startswith("Scripted answer to: no tools question")
    answers = [r for r in llm.chat_requests if "no tools question" in r.text
               and not r.is_guard_check]
    assert answers and not any(r.tool_names for r in answers)
