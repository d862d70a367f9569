"""Scenarios of upstream's behave suite that LCore's other tests do not pin, through the real app.

Upstream lightspeed-stack tests its service with behave (tests/e2e/features/*.feature, commit
cd1a0484). Each test here replays one of its scenarios against LCore in front of a real Llama
Stack (server mode, the scripted LLM) and asserts what upstream's scenario asserts: status,
fields, texts. The feature file and scenario are named in each test's docstring.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from tests.e2e.support import lcore_config, parse_sse, started

AUTH = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30"}


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory,
                 llama_stack_server: Any) -> AsyncIterator[Any]:
    """LCore configured as upstream's lightspeed-stack-authorized.yaml: noop-with-token."""
    workdir = tmp_path_factory.mktemp("upstream-e2e")
    app = create_app(lcore_config(workdir, "server", llama_stack_server.url,
                                  authentication={"module": "noop-with-token"}),
                     plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        yield test_app.test_client()


async def ask(client: Any, body: dict[str, Any], path: str = "/v1/query") -> tuple[int, Any]:
    answer = await client.post(path, json=body, headers=AUTH)
    return answer.status_code, await answer.get_json()


# --- conversation ids ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/query", "/v1/streaming_query"])
async def test_query_refuses_a_conversation_id_upstream_calls_improper(
        client: Any, path: str) -> None:
    """query.feature, "...incorrect conversation ID format": `123e4567` is neither a UUID nor
    Llama Stack's 48 hex digits: 422 `Value error, Improper conversation ID '123e4567'`."""
    status, body = await ask(client, {"conversation_id": "123e4567", "query": "Write"}, path)
    assert status == 422, body
    assert body["detail"] == [{"type": "value_error", "loc": ["body", "conversation_id"],
                               "msg": "Value error, Improper conversation ID '123e4567'",
                               "input": "123e4567"}]


async def test_feedback_refuses_an_improper_conversation_id(client: Any) -> None:
    """feedback: upstream's FeedbackRequest says it without quotes."""
    status, body = await ask(client, {"conversation_id": "123e4567", "user_question": "q",
                                      "llm_response": "a", "sentiment": 1}, "/v1/feedback")
    assert status == 422, body
    assert body["detail"][0]["msg"] == "Value error, Improper conversation ID 123e4567"


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
async def test_conversation_path_id_not_upstreams_format_is_400(client: Any,
                                                                method: str) -> None:
    """conversations.feature, "...endpoint fails when conversation_id is malformed": `abcdef`
    is a 400 `Invalid conversation ID format` (not "not found": a client learns its id is
    wrong, not that the conversation is gone)."""
    answer = await client.open("/v1/conversations/abcdef", method=method, headers=AUTH,
                               json={"topic_summary": "t"})
    assert answer.status_code == 400
    assert await answer.get_json() == {"detail": {
        "response": "Invalid conversation ID format",
        "cause": "The conversation ID abcdef has invalid format."}}


@pytest.mark.parametrize("conversation_id", [
    "123e4567-e89b-12d3-a456-426614174000", "0" * 48, "conv_" + "0" * 48,
    "conv_123e4567-e89b-12d3-a456-426614174000"])
async def test_well_formed_unknown_ids_are_not_found(client: Any, conversation_id: str) -> None:
    """query.feature, "...error when attempting to access conversation": a UUID nobody holds is
    404 `Conversation not found`; so are Llama Stack's forms and a migrated UUID id."""
    status, body = await ask(client, {"conversation_id": conversation_id, "query": "Write"})
    assert status == 404, body
    assert body["detail"]["response"] == "Conversation not found"


# --- feedback ----------------------------------------------------------------------------------


async def own_conversation(client: Any) -> str:
    status, body = await ask(client, {"query": "Say Hello."})
    assert status == 200, body
    return str(body["conversation_id"])


async def test_feedback_sentiment_out_of_range(client: Any) -> None:
    """feedback.feature, "...invalid sentiment is passed": upstream's value_error text."""
    status, body = await ask(client, {"conversation_id": await own_conversation(client),
                                      "llm_response": "r", "user_question": "q",
                                      "sentiment": 0}, "/v1/feedback")
    assert status == 422, body
    assert body["detail"] == [{"type": "value_error", "loc": ["body", "sentiment"],
                               "msg": "Value error, Improper sentiment value of 0, needs to "
                                      "be -1 or 1", "input": 0}]


@pytest.mark.parametrize(("sent", "stored"), [("1", 1), (" -1 ", -1), (True, 1), (-1.0, -1)])
async def test_feedback_sentiment_read_as_pydantic_reads_an_int(client: Any, sent: Any,
                                                                stored: int) -> None:
    """Upstream's FeedbackRequest has `sentiment: Optional[int]`, which pydantic reads laxly:
    the string "1" (and `true`, `-1.0`) is a sentiment of 1, stored as the number."""
    storage = Path(client.app.runtime.config.user_data_collection.feedback_storage)
    before = set(storage.glob("*.json")) if storage.exists() else set()
    status, body = await ask(client, {"conversation_id": await own_conversation(client),
                                      "llm_response": "r", "user_question": "q",
                                      "sentiment": sent}, "/v1/feedback")
    assert (status, body) == (200, {"response": "feedback received"})
    [written] = set(storage.glob("*.json")) - before
    assert json.loads(written.read_text())["sentiment"] == stored


async def test_feedback_sentiment_string_out_of_range(client: Any) -> None:
    """A string parsed to 0 is upstream's value_error about 0, the input as sent."""
    status, body = await ask(client, {"conversation_id": await own_conversation(client),
                                      "llm_response": "r", "user_question": "q",
                                      "sentiment": "0"}, "/v1/feedback")
    assert status == 422, body
    assert body["detail"] == [{"type": "value_error", "loc": ["body", "sentiment"],
                               "msg": "Value error, Improper sentiment value of 0, needs to "
                                      "be -1 or 1", "input": "0"}]


async def test_feedback_storage_unwritable(client: Any, tmp_path: Path) -> None:
    """feedback.feature, "...invalid feedback storage path is configured": 500 `Failed to store
    feedback`, the cause naming the configured directory."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    runtime = client.app.runtime
    collection = runtime.config.user_data_collection
    before = collection.feedback_storage
    collection.feedback_storage = str(blocker / "feedback")
    try:
        status, body = await ask(client, {"conversation_id": await own_conversation(client),
                                          "llm_response": "r", "user_question": "q",
                                          "sentiment": 1}, "/v1/feedback")
    finally:
        collection.feedback_storage = before
    assert status == 500, body
    assert body == {"detail": {"response": "Failed to store feedback",
                               "cause": f"Failed to store feedback at directory: "
                                        f"{blocker / 'feedback'}"}}


# --- prompts.feature, vector_stores.feature ----------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("PUT", "/v1/prompts/pmpt_" + "f" * 48, {"prompt": "p", "version": 0}, "version"),
    ("POST", "/v1/vector-stores", {"name": "n", "embedding_dimension": 0},
     "embedding_dimension"),
    ("PUT", "/v1/vector-stores/vs_x", {"expires_at": 0}, "expires_at"),
    ("POST", "/v1/mcp-servers", {"name": "n", "url": "http://127.0.0.1:9/mcp", "timeout": 0},
     "timeout"),
])
async def test_zero_where_upstream_wants_a_positive_integer(client: Any, method: str, path: str,
                                                            body: dict[str, Any],
                                                            field: str) -> None:
    """prompts.feature, "Update prompt with invalid version...": upstream's fields are
    `gt=0`, so 0 is pydantic's `greater_than` entry (not a value_error naming LCore's own
    upper bound)."""
    answer = await client.open(path, method=method, json=body, headers=AUTH)
    assert answer.status_code == 422
    assert (await answer.get_json())["detail"] == [{
        "type": "greater_than", "loc": ["body", field], "msg": "Input should be greater than 0",
        "input": 0}]


# --- upstream's form of a conversation id -------------------------------------------------------


async def test_upstreams_bare_id_finds_the_conversation(client: Any) -> None:
    """Upstream answers a conversation's id without Llama Stack's `conv_` (and `lcore migrate`
    keeps upstream's conversations under `conv_` + that id): every endpoint that takes an id
    finds the conversation by it, as upstream's feature files use the ids it answered."""
    bare = (await own_conversation(client)).removeprefix("conv_")
    status, body = await ask(client, {"query": "again", "conversation_id": bare})
    assert status == 200, body
    assert body["conversation_id"] == f"conv_{bare}"
    answer = await client.post("/v1/streaming_query", headers=AUTH,
                               json={"query": "and again", "conversation_id": bare})
    assert answer.status_code == 200
    assert '"event": "end"' in await answer.get_data(as_text=True)
    status, body = await ask(client, {"conversation_id": bare, "llm_response": "r",
                                      "user_question": "q", "sentiment": 1}, "/v1/feedback")
    assert (status, body) == (200, {"response": "feedback received"})
    history = await client.get(f"/v1/conversations/{bare}", headers=AUTH)
    assert len((await history.get_json())["chat_history"]) == 3
    renamed = await client.put(f"/v2/conversations/{bare}", headers=AUTH,
                               json={"topic_summary": "CI/CD Pipeline"})
    assert renamed.status_code == 200
    deleted = await client.delete(f"/v1/conversations/{bare}", headers=AUTH)
    assert (await deleted.get_json())["deleted"] is True


async def test_an_id_in_upper_case_finds_the_conversation(client: Any) -> None:
    """Hex digits in either case are the same id (as LCore took them before; upstream's
    pattern accepts both): the conversation is found, in the body and in a path."""
    upper = (await own_conversation(client)).removeprefix("conv_").upper()
    status, body = await ask(client, {"query": "again", "conversation_id": upper})
    assert status == 200, body
    assert body["conversation_id"] == f"conv_{upper.lower()}"
    found = await client.get(f"/v1/conversations/conv_{upper}", headers=AUTH)
    assert found.status_code == 200, await found.get_data(as_text=True)


async def test_an_id_with_a_trailing_newline_is_malformed(client: Any) -> None:
    """Python's `$` matches before a final newline: such an id must still be refused."""
    status, body = await ask(client, {"query": "Write", "conversation_id": "0" * 48 + "\n"})
    assert status == 422, body
    answer = await client.get("/v1/conversations/" + "0" * 48 + "%0A", headers=AUTH)
    assert answer.status_code == 400, await answer.get_data(as_text=True)


async def test_not_found_names_the_id_as_sent(client: Any) -> None:
    """feedback.feature, "...nonexisting conversation ID is passed": the cause names the id
    the client sent, word for word."""
    unknown = "12345678-abcd-0000-0123-456789abcdef"
    status, body = await ask(client, {"conversation_id": unknown, "llm_response": "r",
                                      "user_question": "q", "sentiment": -1}, "/v1/feedback")
    assert status == 404
    assert body == {"detail": {"response": "Conversation not found",
                               "cause": f"Conversation with ID {unknown} does not exist"}}
    for answer in (await client.post("/v1/query", headers=AUTH,
                                     json={"query": "q", "conversation_id": unknown}),
                   await client.get(f"/v1/conversations/{unknown}", headers=AUTH)):
        assert (await answer.get_json())["detail"]["cause"] == (
            f"Conversation with ID {unknown} does not exist")


# --- health -----------------------------------------------------------------------------------


async def test_readiness_when_healthy(client: Any) -> None:
    """health.feature, "...proper readiness state": upstream's reason and status texts (LCore
    also lists each component it checked in `providers`: docs/upstream.md)."""
    answer = await client.get("/readiness", headers=AUTH)
    body = await answer.get_json()
    assert answer.status_code == 200
    assert {k: body[k] for k in ("ready", "reason", "overall_status", "impacts")} == {
        "ready": True, "reason": "All providers are healthy", "overall_status": "healthy",
        "impacts": None}
    assert all(p["status"] == "ok" for p in body["providers"])
    assert await (await client.get("/liveness", headers=AUTH)).get_json() == {"alive": True}


# --- image attachments ------------------------------------------------------------------------

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSu"
       "QmCC")


@pytest.mark.parametrize(("attachment_type", "content", "msg"), [
    ("configuration", PNG, "attachment_type and content_type are inconsistent: "
                           "attachment_type='configuration', content_type='image/png'"),
    ("image", "dGhpcyBpcyBub3QgYW4gaW1hZ2UgYXQgYWxs",
     "Image content does not match declared content_type 'image/png': invalid image data"),
    ("image", "not-valid-base64!!!",
     "Invalid base64 content for image attachment: Only base64 data is allowed"),
], ids=["mismatched type", "not an image", "not base64"])
@pytest.mark.parametrize("path", ["/v1/query", "/v1/streaming_query"])
async def test_image_attachment_refused(client: Any, path: str, attachment_type: str,
                                        content: str, msg: str) -> None:
    """query.feature and streaming_query.feature, "...rejects image attachment with ...": 422
    with upstream's text, at the attachment."""
    attachment = {"attachment_type": attachment_type, "content": content,
                  "content_type": "image/png"}
    status, body = await ask(client, {"query": "Describe this image",
                                      "attachments": [attachment]}, path)
    assert status == 422, body
    assert body["detail"] == [{"type": "value_error", "loc": ["body", "attachments", 0],
                               "msg": f"Value error, {msg}", "input": attachment}]


async def test_image_and_text_attachments_accepted(client: Any) -> None:
    """query.feature, "...text and image attachments are sent together": 200."""
    status, body = await ask(client, {"query": "Summarize the log and describe the image",
                                      "attachments": [
                                          {"attachment_type": "log", "content_type": "text/plain",
                                           "content": "error: something went wrong"},
                                          {"attachment_type": "image", "content": PNG,
                                           "content_type": "image/png"}]})
    assert status == 200, body


# --- /v2/conversations ---------------------------------------------------------------------------


async def test_v2_list_gives_last_message_timestamp_as_a_number(client: Any) -> None:
    """conversation_cache_v2.feature, "V2 conversations endpoint finds the correct conversation":
    each entry has `conversation_id`, `topic_summary` (string or null) and
    `last_message_timestamp`, a number (seconds since the epoch)."""
    before = time.time()
    conversation_id = await own_conversation(client)
    listed = await (await client.get("/v2/conversations", headers=AUTH)).get_json()
    entry = next(c for c in listed["conversations"] if c["conversation_id"] == conversation_id)
    assert isinstance(entry["last_message_timestamp"], float), entry
    assert before - 1 <= entry["last_message_timestamp"] <= time.time() + 1
    assert entry["topic_summary"] is None or isinstance(entry["topic_summary"], str)


async def test_v2_rename_to_an_empty_topic_summary(client: Any) -> None:
    """conversation_cache_v2.feature, "...PUT endpoint fails with empty topic summary": 422
    `String should have at least 1 character`."""
    conversation_id = await own_conversation(client)
    answer = await client.put(f"/v2/conversations/{conversation_id}", headers=AUTH,
                              json={"topic_summary": ""})
    assert answer.status_code == 422
    assert (await answer.get_json())["detail"] == [{
        "type": "string_too_short", "loc": ["body", "topic_summary"],
        "msg": "String should have at least 1 character", "input": ""}]


# --- /v1/responses -----------------------------------------------------------------------------

MODEL = "openai/scripted-llm"


@pytest.mark.parametrize(("fields", "entry"), [
    ({"conversation": "short-id"},
     {"type": "value_error", "loc": ["body", "conversation"], "input": "short-id",
      "msg": "Value error, Improper conversation ID 'short-id'"}),
    ({"conversation": "123e4567-e89b-12d3-a456-426614174000", "previous_response_id": "resp_any"},
     {"type": "value_error", "loc": ["body"],
      "msg": "Value error, `conversation` and `previous_response_id` are mutually exclusive. "
             "Only one can be provided at a time."}),
    ({"previous_response_id": "modr_foo"},
     {"type": "value_error", "loc": ["body", "previous_response_id"], "input": "modr_foo",
      "msg": "Value error, You cannot provide context by moderation response."}),
], ids=["malformed conversation", "conversation and previous response", "moderation id"])
async def test_responses_refuses(client: Any, fields: dict[str, Any],
                                 entry: dict[str, Any]) -> None:
    """responses.feature, "Responses returns 422 for malformed conversation id", "... when
    conversation and previous_response_id are both set", "... looks like a moderation id"."""
    status, body = await ask(client, {"input": "Hi", "model": MODEL, "stream": False, **fields},
                             "/v1/responses")
    assert status == 422, body
    got = body["detail"][0]
    assert {k: got[k] for k in entry} == entry, body


async def test_responses_unknown_conversation_names_it_as_sent(client: Any) -> None:
    """responses.feature, "...unknown existing-format conversation id": 404 naming the id."""
    unknown = "123e4567-e89b-12d3-a456-426614174000"
    status, body = await ask(client, {"input": "Hi", "model": MODEL, "stream": False,
                                      "conversation": unknown}, "/v1/responses")
    assert (status, body) == (404, {"detail": {
        "response": "Conversation not found",
        "cause": f"Conversation with ID {unknown} does not exist"}})


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_include_outside_upstreams_list(client: Any, stream: bool) -> None:
    """responses_streaming.feature, "...invalid include enum value": 422 literal_error at the
    item (LCore passed it on and relayed Llama Stack's 400)."""
    status, body = await ask(client, {"input": "Hi", "model": MODEL, "stream": stream,
                                      "include": ["not_a_valid_include_token"]},
                             "/v1/responses")
    assert status == 422, body
    entry = body["detail"][0]
    assert (entry["type"], entry["loc"], entry["input"]) == (
        "literal_error", ["body", "include", 0], "not_a_valid_include_token")
    assert entry["msg"].startswith("Input should be 'web_search_call.action.sources', ")
    status, body = await ask(client, {"input": "Hi", "model": MODEL, "stream": False,
                                      "include": ["file_search_call.results"]}, "/v1/responses")
    assert status == 200, body


# --- streaming_query: the model refuses an over-long prompt ---------------------------------


@pytest.mark.parametrize(("error", "status", "response"), [
    ("This model's maximum context length is 128 tokens (context_length_exceeded)", 413,
     "Prompt is too long"),
    ("429 RESOURCE_EXHAUSTED: quota", 429, "The model quota has been exceeded"),
])
async def test_streaming_model_refusal_is_upstreams_error_event(
        client: Any, llm: Any, error: str, status: int, response: str) -> None:
    """streaming_query.feature, "...without shields returns 200 and error in stream when
    question is too long for model context": the stream has begun (200), and its error event
    says `Prompt is too long` (and a spent provider quota upstream's 429 text), as /v1/query's
    status and body do."""
    question = f"a question the model refuses with {status}"
    llm.script(question, status=400, error=error)
    answer = await client.post("/v1/streaming_query", headers=AUTH,
                               json={"query": question, "shield_ids": []})
    text = await answer.get_data(as_text=True)
    assert answer.status_code == 200, text
    errors = [e["data"] for e in parse_sse(text) if e.get("event") == "error"]
    assert errors and (errors[0]["status_code"], errors[0]["response"]) == (status, response)


async def test_conversations_without_a_conversation_cache(tmp_path: Path,
                                                          llama_stack_server: Any) -> None:
    """conversation_cache_v2.feature, "...fails when cache not configured" (upstream: 500
    `Conversation cache not configured`): LCore lists and reads conversations from its user
    database and Llama Stack (docs/upstream.md)."""
    config = lcore_config(tmp_path, "server", llama_stack_server.url)
    text = config.read_text()
    config.write_text("\n".join(line for line in text.splitlines()
                                if not line.startswith(("conversation_cache", "  type: memory",
                                                        "  memory", "    max_entries"))))
    assert "conversation_cache" not in config.read_text()
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        client = test_app.test_client()
        asked = await (await client.post("/v1/query", json={"query": "no cache"})).get_json()
        listed = await client.get("/v2/conversations")
        assert listed.status_code == 200
        assert asked["conversation_id"] in {
            c["conversation_id"] for c in (await listed.get_json())["conversations"]}
        history = await client.get(f"/v1/conversations/{asked['conversation_id']}")
        assert history.status_code == 200, await history.get_data(as_text=True)
        assert len((await history.get_json())["chat_history"]) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_input_list_of_strings(client: Any, stream: bool) -> None:
    """responses.feature and responses_streaming.feature, "...input is a bare JSON array": a
    list of strings is neither branch of `str | list[item]`; pydantic's first error is the
    string branch's, string_type at body.input.str with the whole input."""
    given = ["plain", "strings", "list"]
    status, body = await ask(client, {"input": given, "model": MODEL, "stream": stream},
                             "/v1/responses")
    assert status == 422, body
    assert body["detail"][0] == {"type": "string_type", "loc": ["body", "input", "str"],
                                 "msg": "Input should be a valid string", "input": given}


async def test_stream_end_event_has_available_quotas_beside_data(client: Any) -> None:
    """streaming_query.feature, "...streamed response contains token counter fields": upstream's
    end event carries input_tokens and output_tokens in `data` and `available_quotas` beside
    it (event["available_quotas"]); LCore keeps a copy inside `data` too."""
    answer = await client.post("/v1/streaming_query", headers=AUTH, json={"query": "Say hi"})
    events = parse_sse(await answer.get_data(as_text=True))
    assert [e["event"] for e in events][:2] == ["start", "token"]
    assert [e["event"] for e in events][-2:] == ["turn_complete", "end"]
    end = events[-1]
    assert end["available_quotas"] == end["data"]["available_quotas"] == {}
    assert end["data"]["input_tokens"] >= 0 and end["data"]["output_tokens"] >= 0
    tokens = "".join(e["data"]["token"] for e in events if e["event"] == "token")
    assert tokens == events[-2]["data"]["token"]  # "The streamed response is equal to the full"


# --- proxy.feature, tls-ca/tls-mtls/tls-tlsv13.feature -------------------------------------------


async def test_a_provider_llama_stack_cannot_reach_is_upstreams_500(tmp_path: Path) -> None:
    """proxy.feature "LLM query fails gracefully when proxy is unreachable", the tls-*
    "Inference fails ..." scenarios: Llama Stack cannot reach the model's provider (here: a
    closed port) and fails the call; upstream answers its generic 500 (streaming: 200 and an
    error event), not that Llama Stack is down."""
    from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml

    stack = LlamaStackServer(write_run_yaml(tmp_path / "stack", "http://127.0.0.1:9/v1"))
    stack.start()
    try:
        app = create_app(lcore_config(tmp_path / "lcore", "server", stack.url,
                                      authentication={"module": "noop-with-token"}),
                         plugins=load_plugins(entrypoints=False))
        async with started(app) as test_app:
            client = test_app.test_client()
            status, body = await ask(client, {"query": "What is 2+2?", "shield_ids": []})
            streamed = await client.post("/v1/streaming_query", headers=AUTH, json={
                "query": "What is 2+2?", "shield_ids": []})
            events = parse_sse(await streamed.get_data(as_text=True))
    finally:
        stack.stop()
    generic = ("Internal server error", "An unexpected error occurred while processing the "
                                        "request.")
    assert status == 500, body
    assert body["detail"]["response"] == generic[0]
    assert body["detail"]["cause"].startswith(generic[1])
    assert streamed.status_code == 200
    [error] = [e["data"] for e in events if e["event"] == "error"]
    assert (error["status_code"], error["response"]) == (500, generic[0])
    assert error["cause"].startswith(generic[1])
