"""`POST /v1/responses` with the real `openai` SDK as the client, a real Llama Stack behind LCore.

The SDK talks to the app through httpx's ASGI transport (the app started, as when served), so
what it parses is exactly what LCore sends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import lcore_quota.plugin
import openai
import pytest

from lcore_core import AuthTuple, hookimpl
from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.schemas import RESPONSES_MAX_INPUT_ITEMS, RESPONSES_MAX_TOOLS
from lcore_core.testing.errors import invalid_fields
from lcore_core.testing.llama_stack import LlamaStackServer
from lcore_core.testing.llm import UNSAFE_MARKER
from lcore_core.testing.mcp_server import weather_report

from .support import Lcore, lcore_config, require_safety_api, started

ACTIONS = ["responses", "model_override", "list_conversations", "get_conversation", "get_models"]


class FixedModel:
    """User `fixed-model` may not choose the model (`model_override` refused)."""

    @hookimpl
    def lcore_authorize(self, auth: AuthTuple, action: str) -> bool | None:
        if auth.user_id == "fixed-model" and action == "model_override":
            return False
        return None


@pytest.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any,
              mcp_test_server: Any) -> AsyncIterator[Any]:
    workdir: Path = tmp_path_factory.mktemp("responses")
    quota = {"sqlite": {"db_path": str(workdir / "quota.db")},
             "limiters": [{"name": "daily", "type": "user_limiter", "initial_quota": 100_000,
                           "quota_increase": 0, "period": "1 day"}]}
    path = lcore_config(workdir, "server", llama_stack_server.url, quota_handlers=quota,
                        mcp_servers=[{"name": "weather", "url": mcp_test_server.url}],
                        authorization={"always_apply_access_rules": True,
                                       "access_rules": [{"role": "*", "actions": ACTIONS}]})
    app = create_app(path, plugins=load_plugins(extra=[FixedModel()]))
    async with started(app) as test_app:
        app.client = test_app.test_client()  # type: ignore[attr-defined]
        yield app


def sdk(app: Any, user: str) -> openai.AsyncOpenAI:
    """The OpenAI SDK pointed at the app; LCore's noop auth takes the user from `user_id`."""
    transport = httpx.ASGITransport(app=app)
    return openai.AsyncOpenAI(
        base_url="http://lcore.test/v1", api_key="unused", max_retries=0,
        default_query={"user_id": user},
        http_client=httpx.AsyncClient(transport=transport, base_url="http://lcore.test"))


@pytest.fixture(scope="module")
async def model(app: Any) -> str:
    models = (await (await app.client.get("/v1/models")).get_json())["models"]
    return next(m["identifier"] for m in models if m["api_model_type"] == "llm")


def quota_of(app: Any) -> Any:
    return app.runtime.state["lcore-quota"]


async def history(app: Any, user: str, conversation: str) -> list[dict[str, Any]]:
    response = await app.client.get(f"/v2/conversations/{conversation}?user_id={user}")
    assert response.status_code == 200, await response.get_data(as_text=True)
    return list((await response.get_json())["chat_history"])


async def test_json_answer_is_parsed_by_the_sdk_and_stored(app: Any, model: str,
                                                           llm: Any) -> None:
    client = sdk(app, "resp-ann")
    before = await quota_of(app).status("resp-ann")
    answer = await client.responses.create(model=model, input="what is a pod", stream=False)
    assert answer.status == "completed" and answer.object == "response"
    assert answer.output_text.startswith("Scripted answer to: what is a pod (user turns: 1")
    assert answer.model == model
    assert answer.instructions == "<server prompt applied>"
    # Upstream's additions: the SDK keeps them (`conversation` as the plain id upstream sends).
    extra = answer.model_extra or {}
    conversation = answer.conversation
    assert isinstance(conversation, str) and conversation.startswith("conv_")
    # Exact usage consumed: the quota moved by the tokens the answer reports.
    spent = answer.usage.input_tokens + answer.usage.output_tokens
    assert spent > 0
    assert extra["available_quotas"] == {"daily": before["daily"] - spent}
    assert await quota_of(app).status("resp-ann") == extra["available_quotas"]
    # The turn is in the user DB and the cache, as one of /v2/query's would be.
    listed = await (await app.client.get("/v2/conversations?user_id=resp-ann")).get_json()
    assert conversation in [c["conversation_id"] for c in listed["conversations"]]
    turns = await history(app, "resp-ann", conversation)
    assert [m["content"] for m in turns[0]["messages"]] == ["what is a pod", answer.output_text]


async def test_stream_is_parsed_by_the_sdk(app: Any, model: str, llm: Any) -> None:
    client = sdk(app, "resp-bo")
    before = await quota_of(app).status("resp-bo")
    stream = await client.responses.create(model=model, input="stream me", stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text == final.output_text
    assert text.startswith("Scripted answer to: stream me (user turns: 1")
    created = events[0].response.model_extra or {}
    extra = final.model_extra or {}
    assert events[0].response.conversation == final.conversation
    assert created["available_quotas"] == {}
    spent = final.usage.input_tokens + final.usage.output_tokens
    assert extra["available_quotas"] == {"daily": before["daily"] - spent}
    assert await quota_of(app).status("resp-bo") == extra["available_quotas"]
    turns = await history(app, "resp-bo", str(final.conversation))
    assert turns[0]["messages"][1]["content"] == text


async def test_sdk_stream_helper_accumulates_the_answer(app: Any, model: str, llm: Any) -> None:
    """`responses.stream` rebuilds the response from the events: they must be consistent."""
    client = sdk(app, "resp-cy")
    async with client.responses.stream(model=model, input="helper stream") as stream:
        final = await stream.get_final_response()
    assert final.output_text.startswith("Scripted answer to: helper stream")


async def test_multi_turn_by_previous_response_and_by_conversation(app: Any, llm: Any) -> None:
    client = sdk(app, "resp-di")
    first = await client.responses.create(input="first question")
    conversation = first.conversation
    second = await client.responses.create(input="second question",
                                           previous_response_id=first.id)
    assert second.output_text.startswith(
        "Scripted answer to: second question (user turns: 2; first: first question")
    assert second.conversation == conversation
    stream = await client.responses.create(input="third question", stream=True,
                                           extra_body={"conversation": conversation})
    third = [e async for e in stream][-1].response
    assert "user turns: 3" in third.output_text
    assert third.conversation == conversation
    turns = await history(app, "resp-di", conversation)
    assert [t["messages"][0]["content"] for t in turns] == [
        "first question", "second question", "third question"]
    # An earlier response continued again forks a new conversation from that point.
    fork = await client.responses.create(input="forked question", previous_response_id=first.id)
    assert "user turns: 2; first: first question" in fork.output_text
    forked = fork.conversation
    assert forked != conversation
    assert len(await history(app, "resp-di", conversation)) == 3
    assert [t["messages"][0]["content"] for t in await history(app, "resp-di", forked)] == [
        "forked question"]
    # Someone else's response or conversation is not found.
    other = sdk(app, "resp-eve")
    with pytest.raises(openai.NotFoundError) as caught:
        await other.responses.create(input="steal", previous_response_id=first.id)
    assert caught.value.body["detail"]["response"] == "Response not found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await other.responses.create(input="steal", extra_body={"conversation": conversation})


async def test_store_false_keeps_nothing(app: Any, llm: Any) -> None:
    client = sdk(app, "resp-fi")
    answer = await client.responses.create(input="forget me", store=False)
    assert answer.output_text.startswith("Scripted answer to: forget me")
    assert await app.runtime.userdb.list("resp-fi") == []


async def test_failed_call_consumes_nothing_and_stores_nothing(app: Any, llm: Any) -> None:
    client = sdk(app, "resp-gu")
    before = await quota_of(app).status("resp-gu")
    llm.script("failing responses call", status=500)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.responses.create(input="failing responses call")
    assert caught.value.status_code >= 500
    assert "detail" in caught.value.body  # type: ignore[operator]
    stream = await client.responses.create(input="failing responses call", stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "error"
    assert await quota_of(app).status("resp-gu") == before
    assert await app.runtime.userdb.list("resp-gu") == []


async def test_model_override_needs_its_action(app: Any, model: str, llm: Any) -> None:
    client = sdk(app, "fixed-model")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await client.responses.create(model=model, input="my own model")
    assert caught.value.body["detail"] == {  # type: ignore[index]  # upstream's texts
        "response": "This instance does not permit overriding model/provider in the query "
                    "request (missing permission: model_override). Please remove the model "
                    "and provider fields from your request.",
        "cause": "User lacks model_override permission required to override model/provider."}
    answer = await client.responses.create(input="the default model")
    assert answer.output_text.startswith("Scripted answer to: the default model")
    with pytest.raises(openai.NotFoundError):
        await sdk(app, "resp-ha").responses.create(model="nope/none", input="x")


async def test_mcp_tool_runs_on_the_configured_server(app: Any, model: str, llm: Any,
                                                     mcp_server: Any) -> None:
    llm.script("responses weather in brno", tool_call=("get_weather", {"city": "Brno"}),
               then="Weather: {tool_output}")
    client = sdk(app, "resp-io")
    answer = await client.responses.create(input="responses weather in brno")
    assert weather_report("Brno") in answer.output_text
    calls = [c for c in mcp_server.tool_calls if c.name == "get_weather"]
    assert calls and calls[-1].arguments == {"city": "Brno"}
    # The configured server is LCore's: neither its items nor its tool entry reach the client.
    assert [item.type for item in answer.output] == ["message"]
    assert not any(getattr(t, "server_label", None) == "weather" for t in answer.tools)

    llm.script("responses stream weather", tool_call=("get_weather", {"city": "Oslo"}),
               then="Weather: {tool_output}")
    stream = await client.responses.create(input="responses stream weather", stream=True)
    events = [e async for e in stream]
    assert not any("mcp" in e.type for e in events)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert weather_report("Oslo") in events[-1].response.output_text
    # The SDK's helper rebuilds the response by output_index: the items left are renumbered.
    llm.script("responses helper weather", tool_call=("get_weather", {"city": "Lima"}),
               then="Weather: {tool_output}")
    async with client.responses.stream(model=model,
                                        input="responses helper weather") as helper:
        final = await helper.get_final_response()
    assert weather_report("Lima") in final.output_text


async def test_listed_tools(app: Any, llm: Any, mcp_server: Any) -> None:
    client = sdk(app, "resp-jo")
    llm.script("listed weather", tool_call=("get_weather", {"city": "Rome"}),
               then="Weather: {tool_output}")
    answer = await client.responses.create(
        input="listed weather", tools=[{"type": "mcp", "server_label": "weather",
                                        "server_url": "http://ignored.invalid/mcp"}])
    assert weather_report("Rome") in answer.output_text
    # tool_choice "none": no tools at all, whatever is listed.
    llm.script("no tools please", text="plain answer")
    await client.responses.create(input="no tools please", tool_choice="none")
    asked = [r for r in llm.chat_requests if "no tools please" in r.text]
    assert asked and not any(r.tool_names for r in asked)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await client.responses.create(input="x", tools=[
            {"type": "mcp", "server_label": "elsewhere", "server_url": "http://10.0.0.1/mcp"}])
    assert "elsewhere" in caught.value.body["detail"]["cause"]  # type: ignore[index]


@pytest.mark.parametrize("fields, field", [
    ({"input": [{"role": "user", "content": "x"}] * (RESPONSES_MAX_INPUT_ITEMS + 1)}, "input"),
    ({"input": "x", "tools": [{"type": "function", "name": f"f{i}", "parameters": {}}
                              for i in range(RESPONSES_MAX_TOOLS + 1)]}, "tools"),
    ({"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"input": "x", "instructions": "i" * 40_000}, "instructions"),
    ({"input": "x", "shield_ids": ["s"] * 33}, "shield_ids"),
    ({"input": "x", "bogus": True}, "bogus"),
    ({"input": ""}, "input"),
    ({"input": "x", "temperature": 3}, "temperature"),
    # a rule of the whole body, as upstream's (loc ["body"])
    ({"input": "x", "conversation": "conv_" + "a" * 48, "previous_response_id": "resp_1"}, ""),
    ({"input": [{"content": "no role"}]}, "input"),
])
async def test_bounds_are_422(app: Any, fields: dict[str, Any], field: str) -> None:
    response = await app.client.post("/v1/responses", json=fields)
    assert response.status_code == 422, await response.get_data(as_text=True)
    assert field in invalid_fields(await response.get_json())


async def test_large_body_is_413(app: Any) -> None:
    client = sdk(app, "resp-ko")
    with pytest.raises(openai.APIStatusError) as caught:
        await client.responses.create(input="x" * 70_000)
    assert caught.value.status_code == 413
    assert caught.value.body["detail"]["response"] == "Request too large"  # type: ignore[index]


# The fields of upstream's ResponsesResponse (docs/devel_doc/openapi.json at cd1a0484).
UPSTREAM_RESPONSE_FIELDS = {
    "available_quotas", "completed_at", "conversation", "created_at", "error", "id",
    "instructions", "max_output_tokens", "max_tool_calls", "metadata", "model", "object",
    "output", "output_text", "parallel_tool_calls", "previous_response_id", "prompt",
    "reasoning", "safety_identifier", "status", "store", "temperature", "text", "tool_choice",
    "tools", "top_p", "truncation", "usage"}


async def test_every_upstream_field_is_in_the_answer(app: Any, model: str, llm: Any) -> None:
    response = await app.client.post("/v1/responses?user_id=resp-fields",
                                      json={"model": model, "input": "which fields"})
    assert response.status_code == 200
    body = await response.get_json()
    assert set(body) >= UPSTREAM_RESPONSE_FIELDS, UPSTREAM_RESPONSE_FIELDS - set(body)
    document = await (await app.client.get("/openapi.json")).get_json()
    documented = document["components"]["schemas"]["ResponsesResponse"]["properties"]
    assert set(documented) >= UPSTREAM_RESPONSE_FIELDS


async def test_openapi_documents_the_endpoint(app: Any) -> None:
    document = await (await app.client.get("/openapi.json")).get_json()
    operation = document["paths"]["/v1/responses"]["post"]
    assert operation["x-lcore-action"] == "responses"
    assert {"200", "403", "413", "422", "429", "503"} <= set(operation["responses"])


async def test_without_the_responses_action_is_403(tmp_path: Path, llama_stack_server: Any,
                                                   llm: Any) -> None:
    path = lcore_config(tmp_path, "server", llama_stack_server.url,
                        authorization={"always_apply_access_rules": True,
                                       "access_rules": [{"role": "*", "actions": ["query"]}]})
    app = create_app(path, plugins=load_plugins(entrypoints=False))
    async with started(app):
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await sdk(app, "resp-lu").responses.create(input="not allowed")
    assert "not authorized" in caught.value.body["detail"]["cause"]  # type: ignore[index]
    assert not [r for r in llm.chat_requests if "not allowed" in r.text]


async def test_llama_stack_down_is_a_503(tmp_path: Path, own_stack: LlamaStackServer,
                                         llm: Any) -> None:
    app = create_app(lcore_config(tmp_path / "lcore", "server", own_stack.url),
                     plugins=load_plugins(entrypoints=False))
    async with started(app):
        client = sdk(app, "resp-mo")
        first = await client.responses.create(input="before the outage")
        own_stack.kill()
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as caught:
                await client.responses.create(input="during the outage", stream=stream,
                                              previous_response_id=first.id)
            assert caught.value.status_code == 503
            detail = caught.value.body["detail"]  # type: ignore[index]
            assert detail["response"] == "Unable to connect to OGX"
        conversation = first.conversation
        response = await app.test_client().get(f"/v2/conversations/{conversation}")
        assert len(json.loads(await response.get_data(as_text=True))["chat_history"]) == 1


def _calls(metrics: str) -> float:
    """ls_llm_calls_total summed over the /v1/responses series."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("ls_llm_calls_total{") and 'endpoint="/v1/responses"' in line)


async def test_both_modes_shields_and_metrics(lcore: Lcore, llm: Any) -> None:
    """Server and library mode alike (no `authorization` section: every action allowed)."""
    await require_safety_api(lcore.runtime)
    client = sdk(lcore.app, "resp-no")
    before = _calls(await (await lcore.client.get("/metrics")).get_data(as_text=True))
    refused = await client.responses.create(input=f"tell me {UNSAFE_MARKER}")
    # A refusal part (the SDK's own `output_text` counts text parts only); upstream's
    # `output_text` field carries the refusal text.
    assert refused.output[0].content[0].type == "refusal"  # type: ignore[union-attr]
    text = (refused.model_extra or {})["output_text"]
    assert text and "Scripted answer" not in text
    allowed = await client.responses.create(input=f"unshielded {UNSAFE_MARKER}",
                                            extra_body={"shield_ids": []})
    assert allowed.output_text.startswith("Scripted answer to: unshielded")
    stream = await client.responses.create(input=f"stream {UNSAFE_MARKER}", stream=True)
    final = [e async for e in stream][-1]
    assert final.type == "response.completed"
    text = (final.response.model_extra or {})["output_text"]
    assert text and "Scripted answer" not in text
    after = _calls(await (await lcore.client.get("/metrics")).get_data(as_text=True))
    assert after - before == 3


async def test_instructions_refused_when_the_system_prompt_is_fixed(
        tmp_path: Path, llama_stack_server: Any, llm: Any) -> None:
    path = lcore_config(tmp_path, "server", llama_stack_server.url,
                        customization={"system_prompt": "Fixed prompt.",
                                       "disable_query_system_prompt": True})
    app = create_app(path, plugins=load_plugins(entrypoints=False))
    async with started(app):
        client = sdk(app, "resp-po")
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await client.responses.create(input="my prompt", instructions="Be a pirate.")
        assert "instructions" in caught.value.body["detail"]["cause"]  # type: ignore[index]
        answer = await client.responses.create(input="fixed prompt",
                                               extra_body={"generate_topic_summary": False})
        assert answer.instructions == "<server prompt applied>"
    asked = [r for r in llm.chat_requests if "fixed prompt" in r.text]
    assert asked and "Fixed prompt." in json.dumps(asked[-1].body)


STORY = " ".join(f"word{i}" for i in range(80))
RESERVE = 500


async def _open_stream(client: Any, user: str, text: str) -> Any:
    """A streamed /v1/responses request whose connection the test controls."""
    connection = client.request(f"/v1/responses?user_id={user}", method="POST",
                                headers={"Content-Type": "application/json"})
    return connection, json.dumps({"input": text, "stream": True,
                                   "generate_topic_summary": False}).encode()


async def _receive_until(connection: Any, received: bytes, *markers: bytes) -> bytes:
    while not any(m in received for m in markers):
        received += await asyncio.wait_for(connection.receive(), 30)
    return received


async def test_faults_mid_stream_consume_nothing(tmp_path: Path, own_stack: LlamaStackServer,
                                                llm: Any) -> None:
    """A client gone mid-stream, then Llama Stack killed mid-stream: no quota spent, no turn
    stored; the reservation taken before the call is given back."""
    llm.script("tell a long story", text=STORY, chunk_delay=0.05)
    quota = {"sqlite": {"db_path": str(tmp_path / "quota.db")}, "reservation_tokens": RESERVE,
             "reservation_chars_per_token": 0,
             "limiters": [{"name": "daily", "type": "user_limiter", "initial_quota": 100_000,
                           "quota_increase": 0, "period": "1 day"}]}
    app = create_app(lcore_config(tmp_path / "lcore", "server", own_stack.url,
                                  quota_handlers=quota),
                     plugins=load_plugins(entrypoints=False, extra=[lcore_quota.plugin]))
    async with started(app) as test_app:
        client = test_app.test_client()
        limiter = app.runtime.state["lcore-quota"]
        before = await limiter.status("resp-qu")

        connection, body = await _open_stream(client, "resp-qu", "tell a long story")
        async with connection:
            await connection.send(body)
            await connection.send_complete()
            received = await _receive_until(connection, b"", b"response.output_text.delta")
            # The reservation is held while the answer streams.
            assert (await limiter.status("resp-qu"))["daily"] == before["daily"] - RESERVE
            await connection.disconnect()
        for _ in range(300):  # the server side notices the disconnect asynchronously
            if await limiter.status("resp-qu") == before:
                break
            await asyncio.sleep(0.1)
        assert await limiter.status("resp-qu") == before
        assert await app.runtime.userdb.list("resp-qu") == []

        connection, body = await _open_stream(client, "resp-qu", "tell a long story")
        async with connection:
            await connection.send(body)
            await connection.send_complete()
            received = await _receive_until(connection, b"", b"response.output_text.delta")
            own_stack.kill()  # SIGKILL while the answer streams
            received = await _receive_until(connection, received, b"data: [DONE]")
        events = [json.loads(line[len("data: "):]) for line in received.decode().splitlines()
                  if line.startswith("data: {")]
        kinds = [e["type"] for e in events]
        assert kinds[0] == "response.created" and kinds[-1] == "error", kinds
        assert "response.completed" not in kinds
        assert events[-1]["code"] == "503" and "Traceback" not in events[-1]["message"]
        assert await limiter.status("resp-qu") == before
        assert await app.runtime.userdb.list("resp-qu") == []
