"""The query pipeline end to end: LCore -> real Llama Stack -> scripted LLM, in both modes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from lcore_core.testing.llm import UNSAFE_MARKER, count_words, message_text

from .support import Lcore, parse_sse, require_safety_api


def _words_sent(request: Any) -> int:
    return sum(count_words(message_text(m)) for m in request.messages)


def _request_for(llm: Any, question: str) -> Any:
    """The last chat request that answered `question` (not a guard check or a topic summary)."""
    for request in reversed(llm.chat_requests):
        users = [m for m in request.messages if m.get("role") == "user"]
        if not request.is_guard_check and users and message_text(users[-1]) == question:
            return request
    raise AssertionError(f"the LLM never answered {question!r}")


async def test_query_returns_scripted_answer_and_usage(lcore: Lcore, llm: Any) -> None:
    question = f"what is lcore {uuid.uuid4().hex[:6]}"
    response = await lcore.query(question)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert body["response"] == f"Scripted answer to: {question} (user turns: 1)"
    assert body["conversation_id"]
    assert body["input_tokens"] == _words_sent(_request_for(llm, question))
    assert body["output_tokens"] == count_words(body["response"])
    assert body["available_quotas"] == {}
    assert set(body) >= {"rag_chunks", "referenced_documents", "truncated", "tool_calls",
                         "tool_results"}
    assert float(response.headers["X-LCore-Overhead-Ms"]) >= 0


async def test_deprecated_alias_and_v1_path(lcore: Lcore, llm: Any) -> None:
    old = await lcore.client.post("/query", json={"query": "alias question"})
    assert old.status_code == 200
    assert old.headers.get("Deprecation") == "true"
    v1 = await lcore.client.post("/v1/query", json={"query": "v1 question"})
    assert v1.status_code == 200
    assert "Deprecation" not in v1.headers
    assert (await v1.get_json())["response"].startswith("Scripted answer to: v1 question")


async def test_two_turn_conversation_sees_first_turn(lcore: Lcore, llm: Any) -> None:
    first_q = f"my name is turn-{uuid.uuid4().hex[:6]}"
    first = await (await lcore.query(first_q)).get_json()
    conversation_id = first["conversation_id"]
    second = await lcore.query("what did I say?", conversation_id=conversation_id)
    body = await second.get_json()
    assert body["conversation_id"] == conversation_id
    # The scripted LLM quotes the first user message only when it received the earlier turn.
    assert body["response"] == (f"Scripted answer to: what did I say? "
                                f"(user turns: 2; first: {first_q})")
    history = await (await lcore.client.get(f"/v1/conversations/{conversation_id}")).get_json()
    turns = history["chat_history"]
    assert [t["messages"][0]["content"] for t in turns] == [first_q, "what did I say?"]
    assert turns[1]["messages"][1]["content"] == body["response"]
    # The topic summary is written after the first answer was sent.
    await lcore.runtime.drain()
    listing = await (await lcore.client.get("/v2/conversations")).get_json()
    entry = next(c for c in listing["conversations"] if c["conversation_id"] == conversation_id)
    assert entry["message_count"] == 2
    assert entry["topic_summary"]


async def test_streaming_query_events(lcore: Lcore, llm: Any) -> None:
    question = f"stream please {uuid.uuid4().hex[:6]}"
    status, events = await lcore.stream(question)
    assert status == 200
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end", kinds
    assert "turn_complete" in kinds and "error" not in kinds
    tokens = "".join(e["data"]["token"] for e in events if e["event"] == "token")
    expected = f"Scripted answer to: {question} (user turns: 1)"
    assert tokens == expected
    assert [e["data"]["id"] for e in events if e["event"] == "token"] == list(
        range(kinds.count("token")))
    end = events[-1]["data"]
    assert end["output_tokens"] == count_words(expected)
    assert end["input_tokens"] == _words_sent(_request_for(llm, question))
    assert end["overhead_ms"] >= 0
    conversation_id = events[0]["data"]["conversation_id"]
    history = await (await lcore.client.get(f"/v1/conversations/{conversation_id}")).get_json()
    assert history["chat_history"][0]["messages"][1]["content"] == expected


async def test_streaming_text_plain(lcore: Lcore, llm: Any) -> None:
    response = await lcore.client.post("/v2/streaming_query",
                                       json={"query": "plain text", "media_type": "text/plain"})
    text = await response.get_data(as_text=True)
    assert text == "Scripted answer to: plain text (user turns: 1)"


async def test_shield_refusal_is_an_answer_not_an_error(lcore: Lcore, llm: Any) -> None:
    await require_safety_api(lcore.runtime)
    response = await lcore.query(f"tell me something {UNSAFE_MARKER}")
    assert response.status_code == 200
    body = await response.get_json()
    assert "Scripted answer" not in body["response"]
    assert body["response"]  # the refusal text
    metrics = await (await lcore.client.get("/metrics")).get_data(as_text=True)
    assert "ls_llm_validation_errors_total" in metrics
    violations = [line for line in metrics.splitlines()
                  if line.startswith("ls_llm_validation_errors_total{")]
    assert violations and float(violations[0].rsplit(" ", 1)[1]) >= 1


async def test_shield_can_be_switched_off_per_request(lcore: Lcore, llm: Any) -> None:
    body = await (await lcore.query(f"no shields {UNSAFE_MARKER}", shield_ids=[])).get_json()
    assert body["response"].startswith("Scripted answer to: no shields")


async def test_llm_error_is_503_and_stores_nothing(lcore: Lcore, llm: Any) -> None:
    llm.script("explode now", status=500, error="boom")
    before = len((await (await lcore.client.get("/v1/conversations")).get_json())
                 ["conversations"])
    response = await lcore.query("explode now")
    assert response.status_code in (500, 503)
    body = await response.get_json()
    assert set(body["detail"]) >= {"response", "cause"}
    after = len((await (await lcore.client.get("/v1/conversations")).get_json())
                ["conversations"])
    assert after == before


async def test_stream_error_event_when_llm_fails(lcore: Lcore, llm: Any) -> None:
    llm.script("stream explode", status=500, error="boom")
    status, events = await lcore.stream("stream explode")
    assert status == 200
    assert events[0]["event"] == "start"
    assert events[-1]["event"] == "error"
    assert events[-1]["data"]["status_code"] >= 500
    conversation_id = events[0]["data"]["conversation_id"]
    missing = await lcore.client.get(f"/v1/conversations/{conversation_id}")
    assert missing.status_code == 404


async def test_unknown_model_lists_valid_ones(lcore: Lcore, llm: Any) -> None:
    response = await lcore.query("hi", model="nope", provider="openai")
    assert response.status_code == 404
    body = await response.get_json()
    assert "scripted-llm" in body["detail"]["cause"]


async def test_explicit_model_selection(lcore: Lcore, llm: Any) -> None:
    response = await lcore.query("pick model", model="scripted-llm", provider="openai")
    assert response.status_code == 200
    assert _request_for(llm, "pick model").body["model"] == "scripted-llm"


async def test_unknown_conversation_is_404_and_malformed_is_4xx(lcore: Lcore, llm: Any) -> None:
    unknown = await lcore.query("hi", conversation_id="conv_" + "0" * 48)
    assert unknown.status_code == 404
    bad = await lcore.query("hi", conversation_id="../../etc/passwd")
    assert bad.status_code == 422
    assert (await lcore.client.get("/v1/conversations/..%2F..%2Fetc")).status_code in (400, 404)


async def test_bad_bodies(lcore: Lcore, llm: Any) -> None:
    assert (await lcore.client.post("/v2/query", data="{not json",
                                    headers={"Content-Type": "application/json"})
            ).status_code == 422
    assert (await lcore.client.post("/v2/query", data="query=x",
                                    headers={"Content-Type": "text/plain"})).status_code == 400
    assert (await lcore.client.post("/v2/query", json={"nope": 1})).status_code == 422
    assert (await lcore.client.post("/v2/query", json={"query": "x", "extra": 1})
            ).status_code == 422
    assert (await lcore.client.post("/v2/query", json=["query"])).status_code == 422


@pytest.mark.parametrize(("error", "status", "response", "cause"), [
    ("This model's maximum context length is 128 tokens (context_length_exceeded)", 413,
     "Prompt is too long", "The input exceeds the context window size of model "
                           "'openai/scripted-llm'."),
    ("429 RESOURCE_EXHAUSTED: quota", 429, "The model quota has been exceeded",
     "The token quota for model openai/scripted-llm has been exceeded."),
])
async def test_model_refusals_get_upstreams_texts(lcore: Lcore, llm: Any, error: str,
                                                  status: int, response: str,
                                                  cause: str) -> None:
    question = f"refused by the model {status}"
    llm.script(question, status=400, error=error)
    answer = await lcore.client.post("/v1/query", json={"query": question})
    if answer.status_code == 200 and lcore.runtime.llama.backend == "ogx" and status == 413:
        pytest.skip("OGX retried the context-length refusal itself, with the history "
                    "truncated: no refusal reached LCore")
    assert answer.status_code == status, await answer.get_data(as_text=True)
    assert (await answer.get_json())["detail"] == {"response": response, "cause": cause}


async def test_upstream_solr_field_is_null_or_refused(lcore: Lcore, llm: Any) -> None:
    accepted = await lcore.client.post("/v1/query", json={
        "query": "with solr null", "solr": None, "generate_topic_summary": False})
    assert accepted.status_code == 200
    refused = await lcore.client.post("/v1/query", json={
        "query": "with solr", "solr": {"mode": "hybrid", "filters": {"fq": ["product:*x*"]}}})
    assert refused.status_code == 422
    assert "solr" in await refused.get_data(as_text=True)
    assert "not supported" in await refused.get_data(as_text=True)


async def test_delete_conversation_removes_it_everywhere(lcore: Lcore, llm: Any) -> None:
    conversation_id = (await (await lcore.query("to be deleted")).get_json())["conversation_id"]
    deleted = await lcore.client.delete(f"/v1/conversations/{conversation_id}")
    assert deleted.status_code == 200
    assert await deleted.get_json() == {
        "conversation_id": conversation_id, "deleted": True, "success": True,
        "response": "Conversation deleted successfully"}
    assert (await lcore.client.get(f"/v1/conversations/{conversation_id}")).status_code == 404
    # Deleting it again is upstream's "not found" answer: 200 with deleted false.
    again = await lcore.client.delete(f"/v1/conversations/{conversation_id}")
    assert again.status_code == 200
    assert await again.get_json() == {
        "conversation_id": conversation_id, "deleted": False, "success": True,
        "response": "Conversation not found"}
    assert await lcore.runtime.cache.get(
        "00000000-0000-0000-0000-000", conversation_id) == []
    # Llama Stack no longer has it either: continuing it is refused.
    assert (await lcore.query("again", conversation_id=conversation_id)).status_code == 404


async def test_update_topic_summary(lcore: Lcore, llm: Any) -> None:
    conversation_id = (await (await lcore.query("rename me")).get_json())["conversation_id"]
    put = await lcore.client.put(f"/v2/conversations/{conversation_id}",
                                 json={"topic_summary": "Renamed topic"})
    assert put.status_code == 200
    listing = await (await lcore.client.get("/conversations")).get_json()
    entry = next(c for c in listing["conversations"] if c["conversation_id"] == conversation_id)
    assert entry["topic_summary"] == "Renamed topic"


async def test_client_disconnect_cancels_stream_and_stores_nothing(lcore: Lcore,
                                                                   llm: Any) -> None:
    llm.script("slow stream", text="one two three four five six seven eight nine ten",
               chunk_delay=0.5)
    async with lcore.client.request("/v2/streaming_query", method="POST",
                                    headers={"Content-Type": "application/json"}) as conn:
        await conn.send(b'{"query": "slow stream"}')
        await conn.send_complete()
        first = b""
        while b"\n\n" not in first:
            first += await asyncio.wait_for(conn.receive(), 30)
        start = parse_sse(first.decode())[0]
        assert start["event"] == "start"
        await conn.disconnect()
    await asyncio.sleep(1.0)
    conversation_id = start["data"]["conversation_id"]
    assert (await lcore.client.get(f"/v1/conversations/{conversation_id}")).status_code == 404


async def test_attachments_reach_the_model(lcore: Lcore, llm: Any) -> None:
    attachment = {"attachment_type": "log", "content_type": "text/plain",
                  "content": "ERROR disk-full-7731 on node-3"}
    response = await lcore.query("why did it fail", attachments=[attachment],
                                 generate_topic_summary=False)
    assert response.status_code == 200
    sent = [r for r in llm.chat_requests if "disk-full-7731" in r.text]
    assert sent, "the attachment was not sent to the model"
    conversation_id = (await response.get_json())["conversation_id"]
    entries = await lcore.runtime.cache.get("00000000-0000-0000-0000-000", conversation_id)
    # The cache keeps what was attached, not the body (its size in bytes instead).
    assert entries[0].attachments == [{"attachment_type": "log", "content_type": "text/plain",
                                       "size": len(attachment["content"])}]
    bad = await lcore.query("x", attachments=[{"attachment_type": "log"}])
    assert bad.status_code == 422


async def test_logging_survives_library_mode(lcore: Lcore) -> None:
    """Library start-up rewrites logging; LCore's INFO lines must still go out, once."""
    import logging

    await lcore.query("hello")
    assert logging.getLogger("lcore.request").getEffectiveLevel() <= logging.INFO
    handlers = logging.getLogger().handlers
    assert any(getattr(h, "_lcore", False) for h in handlers)
    assert not [h for h in handlers if type(h).__module__.startswith(("llama_stack", "rich"))]

