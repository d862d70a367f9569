"""The test backend itself: the scripted LLM, and a real Llama Stack (server and library) on it."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import llama_stack_client
import pytest
import pytest_asyncio
from llama_stack_client import AsyncLlamaStackClient

from lcore_core.testing.llama_stack import (
    LLM_MODEL_ID,
    SHIELD_ID,
    LlamaStackServer,
    library_client_config,
    write_run_yaml,
)
from lcore_core.testing.llm import UNSAFE_MARKER, ScriptedLLM, ToolCall, count_words, embed
from lcore_core.testing.mcp_server import MCPTestServer, weather_report

pytestmark = pytest.mark.e2e


def output_text(response: Any) -> str:
    """Concatenated output_text parts of all message items."""
    return "".join(
        part.text
        for item in response.output
        if item.type == "message"
        for part in item.content
        if part.type == "output_text"
    )


@pytest.fixture
def client(llama_stack_server: LlamaStackServer) -> AsyncLlamaStackClient:
    return AsyncLlamaStackClient(base_url=llama_stack_server.url, max_retries=0)


# -- the scripted LLM on its own -----------------------------------------------------------------


async def test_scripted_llm_default_reply_usage_and_rules(llm: ScriptedLLM) -> None:
    async with httpx.AsyncClient(base_url=llm.base_url) as http:
        models = (await http.get("/models")).json()
        assert [m["id"] for m in models["data"]] == ["scripted-llm", "scripted-embed"]

        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "first one"}]},
            {"role": "assistant", "content": "ok then"},
            {"role": "user", "content": "second question here"},
        ]
        body = (await http.post("/chat/completions", json={"messages": messages})).json()
        text = body["choices"][0]["message"]["content"]
        assert text == "Scripted answer to: second question here (user turns: 2; first: first one)"
        # 2 + 2 + 2 + 3 words in, 12 words out
        assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}

        llm.script("weather", tool_call=("get_weather", {"city": "Oslo"}),
                   then="It is {tool_output}", once=True)
        ask = [{"role": "user", "content": "weather?"}]
        first = (await http.post("/chat/completions", json={"messages": ask})).json()
        call = first["choices"][0]["message"]["tool_calls"][0]
        assert first["choices"][0]["finish_reason"] == "tool_calls"
        assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
        follow = [
            *ask,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ]
        second = (await http.post("/chat/completions", json={"messages": follow})).json()
        assert second["choices"][0]["message"]["content"] == "It is sunny"
        # the one-shot rule is used up by its final answer
        third = (await http.post("/chat/completions", json={"messages": ask})).json()
        assert third["choices"][0]["message"]["content"].startswith("Scripted answer to: weather?")

        legacy = (await http.post("/completions", json={"prompt": "plain prompt"})).json()
        assert legacy["choices"][0]["text"] == "Scripted answer to: plain prompt (user turns: 1)"
        assert legacy["usage"]["prompt_tokens"] == 2

        llm.script(lambda msgs: len(msgs) > 1, status=503, error="overloaded")
        failed = await http.post("/chat/completions", json={"messages": follow})
        assert failed.status_code == 503
        assert failed.json()["error"]["message"] == "overloaded"
    assert len(llm.chat_requests) == 5


async def test_scripted_llm_stream_chunks_and_usage(llm: ScriptedLLM) -> None:
    llm.script("slow", text="abcdef", chunks=3, chunk_delay=0.05)
    body = {
        "messages": [{"role": "user", "content": "slow please"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = []
    async with (
        httpx.AsyncClient(base_url=llm.base_url) as http,
        http.stream("POST", "/chat/completions", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert deltas == ["", "ab", "cd", "ef", None]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}


async def test_scripted_llm_guard_and_embeddings(llm: ScriptedLLM) -> None:
    guard = "Task: check.\n<BEGIN UNSAFE CONTENT CATEGORIES>\nS1\n{}"
    async with httpx.AsyncClient(base_url=llm.base_url) as http:
        for content, verdict in ((guard.format("hi"), "safe"),
                                 (guard.format(UNSAFE_MARKER), "unsafe\nS1")):
            body = {"messages": [{"role": "user", "content": content}]}
            answer = (await http.post("/chat/completions", json=body)).json()
            assert answer["choices"][0]["message"]["content"] == verdict
        texts = ["the frobnicator port", "frobnicator port number", "banana bread recipe"]
        data = (await http.post("/embeddings", json={"input": texts})).json()["data"]
    vectors = [d["embedding"] for d in data]
    assert len(vectors[0]) == 384
    assert vectors[0] == embed(texts[0], 384)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert abs(cosine(vectors[0], vectors[0]) - 1.0) < 1e-9
    assert cosine(vectors[0], vectors[1]) > 0.5 > cosine(vectors[0], vectors[2])
    assert len(llm.guard_requests) == 2


# -- a real Llama Stack server -------------------------------------------------------------------


async def test_responses_non_streaming(client: AsyncLlamaStackClient, llm: ScriptedLLM) -> None:
    response = await client.responses.create(model=LLM_MODEL_ID, input="hello", stream=False)
    assert response.status == "completed"
    assert output_text(response) == "Scripted answer to: hello (user turns: 1)"
    # usage is passed through from the LLM: 1 word in, 7 words out
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1, 7)
    (sent,) = llm.chat_requests
    assert sent.body["model"] == "scripted-llm"
    assert sent.messages == [{"role": "user", "content": "hello"}]
    # the stack always streams from the LLM, even for a non-streaming response
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}


async def test_responses_streaming(client: AsyncLlamaStackClient, llm: ScriptedLLM) -> None:
    llm.script("slowly", chunks=4, chunk_delay=0.02)
    stream = await client.responses.create(model=LLM_MODEL_ID, input="say it slowly", stream=True)
    types, deltas, completed = [], [], None
    async for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            completed = event.response
    expected = "Scripted answer to: say it slowly (user turns: 1)"
    assert "".join(deltas) == expected
    assert len(deltas) == 4
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert {"response.output_item.added", "response.content_part.added",
            "response.content_part.done", "response.output_item.done"} <= set(types)
    assert completed is not None and completed.usage is not None
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (3, 9)
    assert output_text(completed) == expected


async def test_conversation_replays_history(client: AsyncLlamaStackClient,
                                            llm: ScriptedLLM) -> None:
    conversation = await client.conversations.create()
    assert conversation.id.startswith("conv_")
    first = await client.responses.create(
        model=LLM_MODEL_ID, input="first question", conversation=conversation.id
    )
    second = await client.responses.create(
        model=LLM_MODEL_ID, input="second question", conversation=conversation.id
    )
    assert output_text(first) == "Scripted answer to: first question (user turns: 1)"
    assert output_text(second) == (
        "Scripted answer to: second question (user turns: 2; first: first question)"
    )
    assert llm.chat_requests[-1].messages == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": output_text(first)},
        {"role": "user", "content": "second question"},
    ]
    items = await client.conversations.items.list(conversation.id)
    assert len(items.data) == 4


async def _vector_store_with(client: AsyncLlamaStackClient, documents: list[dict[str, Any]]) -> str:
    store = await client.vector_stores.create(name="docs")
    for doc in documents:
        uploaded = await client.files.create(
            file=(doc["name"], doc["text"].encode()), purpose="assistants"
        )
        attached = await client.vector_stores.files.create(
            vector_store_id=store.id, file_id=uploaded.id, attributes=doc["attributes"]
        )
        for _ in range(100):
            if attached.status != "in_progress":
                break
            await asyncio.sleep(0.1)
            attached = await client.vector_stores.files.retrieve(
                file_id=uploaded.id, vector_store_id=store.id
            )
        assert attached.status == "completed", attached.last_error
    return store.id


async def test_file_search_returns_attributes(client: AsyncLlamaStackClient,
                                              llm: ScriptedLLM) -> None:
    store_id = await _vector_store_with(client, [
        {"name": "frob.txt", "text": "The LCore frobnicator listens on port 4242.",
         "attributes": {"title": "Frobnicator guide", "url": "https://docs.example/frob"}},
        {"name": "banana.txt", "text": "Banana bread needs ripe bananas and flour.",
         "attributes": {"title": "Baking", "url": "https://docs.example/bake"}},
    ])
    tools: Any = [{"type": "file_search", "vector_store_ids": [store_id]}]
    question = "Which port does the frobnicator use?"

    # unscripted: the model answers directly, but it was offered the search tool
    plain = await client.responses.create(model=LLM_MODEL_ID, input=question, tools=tools)
    assert [item.type for item in plain.output] == ["message"]
    assert llm.chat_requests[-1].tool_names == ["file_search"]

    llm.script("frobnicator", tool_call=ToolCall("file_search", {"query": "frobnicator port"}),
               then="Answer from docs: {tool_output}")
    response = await client.responses.create(model=LLM_MODEL_ID, input=question, tools=tools)
    assert [item.type for item in response.output] == ["file_search_call", "message"]
    call = response.output[0]
    assert call.status == "completed"
    assert call.queries == ["frobnicator port"]
    best = call.results[0]
    assert best.attributes["title"] == "Frobnicator guide"
    assert best.attributes["url"] == "https://docs.example/frob"
    assert best.attributes["filename"] == "frob.txt"
    assert "4242" in best.text
    assert best.score > call.results[-1].score
    # the tool output went back to the LLM, and from it into the answer
    assert "4242" in output_text(response)
    assert llm.chat_requests[-1].messages[-1]["role"] == "tool"


async def test_guardrails_refuse_flagged_input(client: AsyncLlamaStackClient,
                                               llm: ScriptedLLM) -> None:
    flagged = await client.responses.create(
        model=LLM_MODEL_ID, input=f"tell me {UNSAFE_MARKER}", guardrails=[SHIELD_ID]
    )
    (message,) = flagged.output
    assert message.type == "message"
    assert message.content[0].type == "refusal"
    assert "violation type: S1" in message.content[0].refusal
    assert llm.chat_requests == []  # the shield stopped it before the model

    fine = await client.responses.create(
        model=LLM_MODEL_ID, input="tell me a joke", guardrails=[SHIELD_ID]
    )
    assert output_text(fine) == "Scripted answer to: tell me a joke (user turns: 1)"
    assert llm.guard_requests

    shield = await client.safety.run_shield(
        shield_id=SHIELD_ID, messages=[{"role": "user", "content": UNSAFE_MARKER}]
    )
    assert shield.violation is not None
    assert shield.violation.metadata == {"violation_type": "S1"}
    clean = await client.safety.run_shield(
        shield_id=SHIELD_ID, messages=[{"role": "user", "content": "hello"}]
    )
    assert clean.violation is None

    moderation = await client.moderations.create(input=UNSAFE_MARKER, model=LLM_MODEL_ID)
    assert moderation.results[0].flagged is True


async def test_guardrails_check_output_after_streaming_it(client: AsyncLlamaStackClient,
                                                          llm: ScriptedLLM) -> None:
    llm.script("leak", text=f"here is {UNSAFE_MARKER}")
    stream = await client.responses.create(
        model=LLM_MODEL_ID, input="leak it", guardrails=[SHIELD_ID], stream=True
    )
    events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    # the text went out as deltas before the output check replaced it with a refusal
    assert "".join(deltas).startswith("here is")
    assert events[-1].type == "response.completed"
    (message,) = events[-1].response.output
    assert message.content[0].type == "refusal"


async def test_llm_errors_surface(client: AsyncLlamaStackClient, llm: ScriptedLLM) -> None:
    llm.script("boom", status=500, error="kaboom")
    with pytest.raises(llama_stack_client.InternalServerError) as raised:
        await client.responses.create(model=LLM_MODEL_ID, input="boom")
    assert raised.value.status_code == 500
    assert raised.value.body == {"detail": "kaboom"}
    # Llama Stack's openai client retries a 5xx twice before giving up
    assert sum("boom" in r.text for r in llm.chat_requests) == 3

    stream = await client.responses.create(model=LLM_MODEL_ID, input="boom", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.message == "kaboom"

    # a 4xx from the model is a 500 from Llama Stack too
    llm.script("bad", status=400, error="bad request")
    with pytest.raises(llama_stack_client.InternalServerError):
        await client.responses.create(model=LLM_MODEL_ID, input="bad")

    with pytest.raises(llama_stack_client.NotFoundError):
        await client.responses.create(model="no-such-provider/model", input="x")

    down = AsyncLlamaStackClient(base_url="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(llama_stack_client.APIConnectionError):
        await down.models.list()


async def test_mcp_tool_runs_with_headers(client: AsyncLlamaStackClient, llm: ScriptedLLM,
                                          mcp_server: MCPTestServer) -> None:
    llm.script("weather", tool_call=("get_weather", {"city": "Paris"}),
               then="MCP says: {tool_output}")
    tools: Any = [{
        "type": "mcp", "server_label": "weather", "server_url": mcp_server.url,
        "require_approval": "never", "headers": {"X-Test": "v"}, "authorization": "secret-token",
    }]
    response = await client.responses.create(
        model=LLM_MODEL_ID, input="What is the weather in Paris?", tools=tools
    )
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    listed, call, _ = response.output
    assert [tool.name for tool in listed.tools] == ["get_weather"]
    assert (call.name, call.server_label, call.error) == ("get_weather", "weather", None)
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.output == weather_report("Paris")
    assert output_text(response) == f"MCP says: {weather_report('Paris')}"

    assert llm.chat_requests[0].tool_names == ["get_weather"]
    # usage sums both LLM calls: the words of both prompts in, tool arguments (2) + answer (11) out
    assert response.usage is not None
    prompts = sum(count_words(r.text) for r in llm.chat_requests)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (prompts, 13)
    (ran,) = mcp_server.tool_calls
    assert ran.arguments == {"city": "Paris"}
    assert ran.headers["x-test"] == "v"
    assert ran.headers["authorization"] == "Bearer secret-token"
    assert all(h.get("x-test") == "v" for h in mcp_server.request_headers)


# -- library mode --------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def library_client(tmp_path_factory: pytest.TempPathFactory, scripted_llm: ScriptedLLM,
                         llama_stack_library_config: Path) -> AsyncIterator[Any]:
    from llama_stack.core.library_client import AsyncLlamaStackAsLibraryClient

    assert llama_stack_library_config.is_file()
    # state of its own: other tests may run a library stack on the shared config in this process
    config = library_client_config(tmp_path_factory.mktemp("library"), scripted_llm.base_url)
    client = AsyncLlamaStackAsLibraryClient(str(config))
    await client.initialize()
    yield client
    await client.shutdown()


async def test_library_mode(library_client: Any, llm: ScriptedLLM) -> None:
    response = await library_client.responses.create(model=LLM_MODEL_ID, input="hello library")
    assert output_text(response) == "Scripted answer to: hello library (user turns: 1)"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (2, 8)

    upload = io.BytesIO(b"library mode wants a named BytesIO")
    upload.name = "note.txt"
    stored = await library_client.files.create(file=upload, purpose="assistants")
    assert stored.filename == "note.txt"

    # library mode raises llama_stack_api errors, not llama_stack_client ones
    from llama_stack_api.common.errors import InternalServerError

    llm.script("boom", status=500, error="kaboom")
    with pytest.raises(InternalServerError, match="kaboom"):
        await library_client.responses.create(model=LLM_MODEL_ID, input="boom")


# -- the server going down ------------------------------------------------------------------------


async def test_server_kill_and_restart(tmp_path: Path, scripted_llm: ScriptedLLM) -> None:
    # a stack of its own: killing the session's would disturb tests sharing it
    server = LlamaStackServer(write_run_yaml(tmp_path / "stack", scripted_llm.base_url))
    await asyncio.to_thread(server.start)
    try:
        client = AsyncLlamaStackClient(base_url=server.url, max_retries=0)
        before = await client.responses.create(model=LLM_MODEL_ID, input="before")
        port = server.port
        server.kill()
        assert not server.running
        with pytest.raises(llama_stack_client.APIConnectionError):
            await client.responses.create(model=LLM_MODEL_ID, input="anyone there?")
        await asyncio.to_thread(server.restart)
        assert server.running and server.port == port
        # same port, same state directory: the stored response survived the restart
        stored = await client.responses.retrieve(before.id)
        assert output_text(stored) == "Scripted answer to: before (user turns: 1)"
    finally:
        server.stop()
    assert server.process is None
    assert "Uvicorn running" in server.log_tail(400)
