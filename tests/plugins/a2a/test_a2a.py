"""lcore-a2a end to end: the official a2a-sdk client against a real LCore over HTTP, in front of a
real Llama Stack and the scripted LLM."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import lcore_a2a.plugin
import pytest
import yaml
from a2a.client import A2ACardResolver
from a2a.client.errors import A2AClientHTTPError, A2AClientJSONRPCError
from a2a.types import (
    FilePart,
    FileWithBytes,
    HTTPAuthSecurityScheme,
    Message,
    Part,
    Task,
    TaskArtifactUpdateEvent,
    TaskIdParams,
    TaskQueryParams,
    TaskState,
    TaskStatusUpdateEvent,
)

from lcore_core import ConfigError
from lcore_core.app import create_app
from lcore_core.auth import DEFAULT_USER_ID
from lcore_core.plugins import load_plugins

from .conftest import ConfigWriter, answer, serving, text_of, user_message

pytestmark = pytest.mark.e2e


def scripted(question: str, turns: int = 1, first: str | None = None) -> str:
    """The scripted LLM's default answer (see lcore_core.testing.llm)."""
    suffix = f"; first: {first[:60]}" if first else ""
    return f"Scripted answer to: {question} (user turns: {turns}{suffix})"


async def send(client: Any, text: str, context_id: str | None = None) -> Task:
    """One blocking `message/send` through the SDK client; the task it returns."""
    events = [e async for e in client.send_message(user_message(text, context_id))]
    assert len(events) == 1
    task, update = events[0]
    assert update is None
    return task


async def stream(client: Any, text: str, context_id: str | None = None) -> list[Any]:
    """One `message/stream` through the SDK client: the (task, update) pairs it yields."""
    return await collect(client, user_message(text, context_id))


async def collect(client: Any, message: Message) -> list[Any]:
    return [e async for e in client.send_message(message)]


# --- agent card -------------------------------------------------------------------------------


async def test_sdk_resolves_the_card_on_both_paths(write_config: ConfigWriter) -> None:
    async with serving(write_config(name="card-test")) as lcore:
        card = await lcore.card()
        assert card.name == "card-test"
        assert card.url == f"{lcore.url}/a2a"
        assert card.capabilities.streaming is True
        assert card.preferred_transport == "JSONRPC"
        assert card.skills and card.default_input_modes == ["text/plain"]
        assert not card.security_schemes and not card.security  # noop: no credentials
        old = await A2ACardResolver(lcore.http, lcore.url).get_agent_card(
            "/.well-known/agent.json")
        assert old == card
        raw = (await lcore.http.get(f"{lcore.url}/.well-known/agent-card.json")).json()
        assert raw["capabilities"]["streaming"] is True and "defaultInputModes" in raw
        # The OpenAPI document describes the card with the SDK's own field names.
        from a2a.types import AgentCard

        document = (await lcore.http.get(f"{lcore.url}/openapi.json")).json()
        answer = document["paths"]["/.well-known/agent-card.json"]["get"]["responses"]["200"]
        ref = answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][ref]
        assert set(schema["properties"]) == {f.alias for f in AgentCard.model_fields.values()}
        assert set(schema["required"]) <= set(raw)


async def test_health_endpoint_as_upstream(write_config: ConfigWriter) -> None:
    from importlib.metadata import version

    from lcore_core import __version__

    async with serving(write_config(
            authentication={"module": "api-key-token",
                            "api_key_config": {"api_key": "k"}})) as lcore:
        response = await lcore.http.get(f"{lcore.url}/a2a/health")  # no credentials
        assert response.status_code == 200, response.text
        body = response.json()
    assert body.pop("timestamp")
    assert body == {"status": "healthy", "service": "lightspeed-a2a", "version": __version__,
                    "a2a_sdk_version": version("a2a-sdk")}


async def test_card_from_yaml_file_and_base_url(write_config: ConfigWriter,
                                                tmp_path: Path) -> None:
    card_file = tmp_path / "agent_card.yaml"
    card_file.write_text(yaml.safe_dump({
        "name": "Cluster helper", "description": "Helps with clusters",
        "provider": {"organization": "Example", "url": "https://example.com"},
        "skills": [{"id": "ops", "name": "Ops", "description": "Operations",
                    "tags": ["ops"], "input_modes": ["text/plain"],
                    "examples": ["How do I scale?"]}],
        "capabilities": {"streaming": False, "stateTransitionHistory": False},
        "default_input_modes": ["text/plain"], "default_output_modes": ["text/plain"],
    }))
    config = write_config(customization={"agent_card_path": str(card_file)},
                          service={"host": "127.0.0.1", "port": 8080,
                                   "base_url": "https://lcore.example.com"})
    async with serving(config) as lcore:
        card = await lcore.card()
    assert (card.name, card.description) == ("Cluster helper", "Helps with clusters")
    assert card.provider is not None and card.provider.organization == "Example"
    assert [s.id for s in card.skills] == ["ops"] and card.skills[0].examples
    assert card.url == "https://lcore.example.com/a2a"
    assert card.capabilities.streaming is True  # LCore always streams


def test_bad_card_config_fails_start_up(write_config: ConfigWriter) -> None:
    config = write_config(customization={"agent_card_config": {"skills": "not a list"}})
    with pytest.raises(ConfigError, match="invalid agent card: skills"):
        create_app(config, plugins=load_plugins(entrypoints=False, extra=[lcore_a2a.plugin]))


async def test_security_schemes_follow_authentication(write_config: ConfigWriter) -> None:
    config = write_config(authentication={"module": "api-key-token",
                                          "api_key_config": {"api_key": "s3cret"}})
    async with serving(config, headers={"Authorization": "Bearer s3cret"}) as lcore:
        card = await lcore.card()
        assert card.security == [{"bearer": []}]
        assert card.security_schemes is not None
        scheme = card.security_schemes["bearer"].root
        assert isinstance(scheme, HTTPAuthSecurityScheme) and scheme.scheme == "bearer"
        # Without the key: the configured authentication answers, in JSON.
        anonymous = await lcore.http.post(f"{lcore.url}/a2a", headers={"Authorization": ""},
                                          json={"jsonrpc": "2.0", "id": 1,
                                                "method": "tasks/get", "params": {"id": "x"}})
        assert anonymous.status_code == 401
        assert anonymous.json()["detail"]["response"]
        bad = await lcore.http.get(f"{lcore.url}/.well-known/agent-card.json",
                                   headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401
        # With it, the SDK works end to end.
        client = await lcore.client(streaming=False)
        task = await send(client, "authenticated hello")
        assert task.status.state == TaskState.completed


async def test_authorization_uses_the_a2a_actions(write_config: ConfigWriter) -> None:
    config = write_config(authorization={"always_apply_access_rules": True, "access_rules": [
        {"role": "*", "actions": ["a2a_agent_card"]}]})
    async with serving(config) as lcore:
        await lcore.card()  # allowed
        denied = await lcore.rpc({"jsonrpc": "2.0", "id": 1, "method": "tasks/get",
                                  "params": {"id": "x"}})
        assert denied.status_code == 403
        assert denied.json()["detail"]["response"] == \
            "User does not have permission to access this endpoint"


# --- messages ---------------------------------------------------------------------------------


async def test_send_two_turns_keep_history(write_config: ConfigWriter, llm: Any) -> None:
    first_q = f"my name is a2a-{uuid.uuid4().hex[:6]}"
    async with serving(write_config()) as lcore:
        client = await lcore.client(streaming=False)
        first = await send(client, first_q)
        assert first.status.state == TaskState.completed
        assert first.artifacts and answer(first) == scripted(first_q)
        assert first.status.message is not None
        assert text_of(first.status.message.parts) == scripted(first_q)
        assert first.history and text_of(first.history[0].parts) == first_q
        assert first.metadata and first.metadata["input_tokens"] > 0
        conversation_id = first.metadata["conversation_id"]
        second = await send(client, "what did I say?", first.context_id)
        assert second.context_id == first.context_id and second.id != first.id
        # The scripted LLM quotes the first user message only when it got the earlier turn.
        assert answer(second) == scripted("what did I say?", 2, first_q)
        assert second.metadata and second.metadata["conversation_id"] == conversation_id

        # The same pipeline as /v2/query: the turns are in the user DB and the cache.
        history = (await lcore.http.get(f"{lcore.url}/v1/conversations/{conversation_id}"))
        assert history.status_code == 200, history.text
        turns = history.json()["chat_history"]
        assert [t["messages"][0]["content"] for t in turns] == [first_q, "what did I say?"]

        # tasks/get gives back the stored task; a finished task cannot be canceled.
        got = await client.get_task(TaskQueryParams(id=first.id))
        assert got.status.state == TaskState.completed
        assert answer(got) == scripted(first_q)
        with pytest.raises(A2AClientJSONRPCError) as not_cancelable:
            await client.cancel_task(TaskIdParams(id=first.id))
        assert not_cancelable.value.error.code == -32002
        with pytest.raises(A2AClientJSONRPCError) as unknown:
            await client.get_task(TaskQueryParams(id=str(uuid.uuid4())))
        assert unknown.value.error.code == -32001


async def test_stream_events_and_history(write_config: ConfigWriter, llm: Any) -> None:
    first_q = f"streamed name {uuid.uuid4().hex[:6]}"
    async with serving(write_config()) as lcore:
        client = await lcore.client(streaming=True)
        events = await stream(client, first_q)
        updates = [u for _, u in events]
        assert updates[0] is None  # the first event is the task itself
        first_task = events[0][0]
        assert isinstance(first_task, Task)
        working = [u for u in updates if isinstance(u, TaskStatusUpdateEvent)
                   and u.status.state == TaskState.working and u.status.message]
        expected = scripted(first_q)
        assert "".join(text_of(u.status.message.parts) for u in working
                       if u.status.message) == expected
        artifacts = [u for u in updates if isinstance(u, TaskArtifactUpdateEvent)]
        assert len(artifacts) == 1 and artifacts[0].last_chunk
        assert text_of(artifacts[0].artifact.parts) == expected
        last = updates[-1]
        assert isinstance(last, TaskStatusUpdateEvent)
        assert last.final and last.status.state == TaskState.completed
        assert all(not u.final for u in updates[:-1] if isinstance(u, TaskStatusUpdateEvent))
        final_task = events[-1][0]
        assert final_task.status.state == TaskState.completed

        context_id = final_task.context_id
        again = await stream(client, "and now?", context_id)
        done = again[-1][0]
        assert done.context_id == context_id
        assert answer(done) == scripted("and now?", 2, first_q)
        # A blocking send continues the streamed context too.
        blocking = await lcore.client(streaming=False)
        third = await send(blocking, "third", context_id)
        assert answer(third) == scripted("third", 3, first_q)


async def test_stream_raw_sse_is_jsonrpc(write_config: ConfigWriter, llm: Any) -> None:
    async with serving(write_config()) as lcore:
        payload = {"jsonrpc": "2.0", "id": "s-1", "method": "message/stream", "params": {
            "message": {"role": "user", "messageId": "m-1",
                        "parts": [{"kind": "text", "text": "raw stream"}]}}}
        async with lcore.http.stream("POST", f"{lcore.url}/a2a", json=payload) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    bodies = [json.loads(line[5:]) for line in lines]
    assert all(b["jsonrpc"] == "2.0" and b["id"] == "s-1" for b in bodies)
    kinds = [b["result"]["kind"] for b in bodies]
    assert kinds[0] == "task" and kinds[-1] == "status-update" and "artifact-update" in kinds
    assert bodies[-1]["result"]["final"] is True
    assert bodies[-1]["result"]["status"]["state"] == "completed"
    assert bodies[0]["result"]["contextId"] and bodies[0]["result"]["history"][0]["messageId"]


async def test_pipeline_failure_ends_the_task_failed(write_config: ConfigWriter,
                                                     llm: Any) -> None:
    llm.script("please fail", status=500, error="scripted outage")
    async with serving(write_config()) as lcore:
        client = await lcore.client(streaming=False)
        task = await send(client, "please fail now")
        assert task.status.state == TaskState.failed
        assert task.metadata and task.metadata["error"]["status_code"] >= 500
        streaming = await lcore.client(streaming=True)
        events = await stream(streaming, "please fail again")
        last = events[-1][1]
        assert last.final and last.status.state == TaskState.failed
        # An unknown model is refused by the pipeline before the LLM call, as on /v2/query.
        unknown = await lcore.rpc({"jsonrpc": "2.0", "id": 3, "method": "message/send",
                                   "params": {"metadata": {"model": "nope",
                                                           "provider": "nope"},
                                              "message": {"role": "user", "messageId": "x",
                                                          "parts": [{"kind": "text",
                                                                     "text": "hi"}]}}})
        body = unknown.json()["result"]
        assert body["status"]["state"] == "failed"
        assert body["metadata"]["error"]["status_code"] == 404


async def test_quota_and_metrics_apply_to_a2a_turns(write_config: ConfigWriter, llm: Any,
                                                    tmp_path: Path) -> None:
    """An A2A turn is a pipeline turn: lcore-quota charges and refuses it, metrics count it."""
    from prometheus_client.parser import text_string_to_metric_families

    quota = {"sqlite": {"db_path": str(tmp_path / "quota.db")},
             "limiters": [{"name": "daily", "type": "user_limiter", "initial_quota": 100_000,
                           "quota_increase": 0, "period": "1 day"}],
             "reservation_tokens": 10, "reservation_chars_per_token": 0}
    plugins = load_plugins()  # the installed distributions, lcore-quota and lcore-a2a among them
    assert plugins.distribution_of("quota") == "lcore-quota"

    async def llm_calls(lcore: Any) -> float:
        text = (await lcore.http.get(f"{lcore.url}/metrics")).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "ls_llm_calls_total"
                   and s.labels.get("endpoint") == "/a2a message/send")

    async with serving(write_config(quota_handlers=quota), plugins=plugins) as lcore:
        client = await lcore.client(streaming=False)
        store = lcore.runtime.state["lcore-quota"]
        before = await llm_calls(lcore)
        task = await send(client, "charge this a2a turn")
        assert task.status.state == TaskState.completed
        spent = task.metadata["input_tokens"] + task.metadata["output_tokens"]
        assert spent > 0 and await llm_calls(lcore) == before + 1
        # The (noop) caller's budget went down by exactly the turn's tokens.
        assert (await store.status(DEFAULT_USER_ID))["daily"] == 100_000 - spent

        await store.store.set_available(store.limiter("daily"), DEFAULT_USER_ID, 0, store.clock())
        refused = await send(client, "refuse this a2a turn")
        assert refused.status.state == TaskState.failed
        assert refused.metadata and refused.metadata["error"]["status_code"] == 429
        assert not [r for r in llm.chat_requests if "refuse this a2a turn" in r.text]
        assert await llm_calls(lcore) == before + 1


async def test_cancel_a_running_stream(write_config: ConfigWriter, llm: Any) -> None:
    llm.script("take your time", delay=5)
    async with serving(write_config()) as lcore:
        client = await lcore.client(streaming=True)
        seen: list[Any] = []
        first_event = asyncio.Event()

        async def consume() -> None:
            async for event in client.send_message(user_message("take your time please")):
                seen.append(event)
                first_event.set()

        consumer = asyncio.create_task(consume())
        await asyncio.wait_for(first_event.wait(), 30)
        task_id = seen[0][0].id
        canceled = await (await lcore.client(streaming=False)).cancel_task(
            TaskIdParams(id=task_id))
        assert canceled.status.state == TaskState.canceled
        await asyncio.wait_for(consumer, 30)
        last = seen[-1][1]
        assert isinstance(last, TaskStatusUpdateEvent)
        assert last.final and last.status.state == TaskState.canceled
        stored = await client.get_task(TaskQueryParams(id=task_id))
        assert stored.status.state == TaskState.canceled


async def test_file_parts_become_attachments(write_config: ConfigWriter, llm: Any) -> None:
    async with serving(write_config()) as lcore:
        client = await lcore.client(streaming=False)
        message = user_message("summarise the log")
        message.parts.append(Part(root=FilePart(file=FileWithBytes(
            bytes=base64.b64encode(b"ERROR disk full").decode(), mime_type="text/plain",
            name="app.log"))))
        task = (await collect(client, message))[0][0]
        assert task.status.state == TaskState.completed
        asked = [r for r in llm.chat_requests if not r.is_guard_check
                 and "summarise the log" in r.text and "topic summary" not in r.text]
        assert asked and "ERROR disk full" in asked[-1].text
        image = user_message("look")
        image.parts.append(Part(root=FilePart(file=FileWithBytes(
            bytes=base64.b64encode(b"\x89PNG").decode(), mime_type="image/png"))))
        with pytest.raises(A2AClientJSONRPCError) as refused:
            _ = [e async for e in client.send_message(image)]
        assert refused.value.error.code == -32005


# --- JSON-RPC errors ----------------------------------------------------------------------------


def _message(**params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "method": "message/send", "params": params}


@pytest.mark.parametrize(("payload", "code", "rpc_id"), [
    ("{not json", -32700, None),
    (b"\xff\xfe", -32700, None),
    # Nested past any parser's patience: a parse error, not a 500.
    ('{"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": ' + "[" * 50_000,
     -32700, None),
    ("[" * 3000 + "]" * 3000, -32700, None),
    ("[]", -32600, None),
    ('"a string"', -32600, None),
    ({"jsonrpc": "1.0", "id": 1, "method": "message/send", "params": {}}, -32600, 1),
    ({"jsonrpc": "2.0", "method": "tasks/get", "params": {"id": "x"}}, -32600, None),
    ({"jsonrpc": "2.0", "id": {"x": 1}, "method": "tasks/get", "params": {}}, -32600, None),
    ({"jsonrpc": "2.0", "id": 2, "method": 5}, -32600, 2),
    ({"jsonrpc": "2.0", "id": 3, "method": "no/such"}, -32601, 3),
    ({"jsonrpc": "2.0", "id": "t", "method": "tasks/get"}, -32602, "t"),
    ({"jsonrpc": "2.0", "id": 4, "method": "tasks/get", "params": {"nope": 1}}, -32602, 4),
    (_message(message={"role": "user", "parts": []}), -32602, 7),
    (_message(message={"role": "user", "messageId": "m", "parts": [
        {"kind": "text", "text": "  "}]}), -32602, 7),
    (_message(message={"role": "user", "messageId": "m", "parts": [
        {"kind": "text", "text": "hi"}]}, metadata={"model": "only-model"}), -32602, 7),
    ({"jsonrpc": "2.0", "id": 5, "method": "tasks/get", "params": {"id": "missing"}},
     -32001, 5),
    ({"jsonrpc": "2.0", "id": 6, "method": "tasks/cancel", "params": {"id": "missing"}},
     -32001, 6),
    ({"jsonrpc": "2.0", "id": 8, "method": "tasks/pushNotificationConfig/set",
      "params": {}}, -32003, 8),
    ({"jsonrpc": "2.0", "id": 9, "method": "tasks/resubscribe", "params": {"id": "x"}},
     -32004, 9),
])
async def test_bad_jsonrpc_inputs_get_the_right_error(
        a2a_server: Any, payload: Any, code: int, rpc_id: Any) -> None:
    response = await a2a_server.rpc(payload)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == rpc_id and "result" not in body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert "Traceback" not in response.text


@pytest.fixture(scope="module")
async def a2a_server(tmp_path_factory: pytest.TempPathFactory,
                     llama_stack_server: Any) -> Any:
    from tests.e2e.support import lcore_config

    config = lcore_config(tmp_path_factory.mktemp("a2a-errors"), "server",
                          llama_stack_server.url)
    async with serving(config) as lcore:
        yield lcore


async def test_http_errors_of_the_service_stay_json(a2a_server: Any) -> None:
    get = await a2a_server.http.put(f"{a2a_server.url}/a2a", json={})
    assert get.status_code == 405 and get.json()["detail"]
    with pytest.raises(A2AClientHTTPError):
        await A2ACardResolver(a2a_server.http, a2a_server.url).get_agent_card("/nope.json")


# --- plugin wiring and configuration ------------------------------------------------------------


def test_routes_exist_only_with_the_plugin(write_config: ConfigWriter) -> None:
    config = write_config()
    without = create_app(config, plugins=load_plugins(entrypoints=False))
    rules = {r.rule for r in without.url_map.iter_rules()}
    assert "/a2a" not in rules and "/.well-known/agent.json" not in rules
    installed = create_app(config)  # entry points, as a user installs it
    rules = {r.rule for r in installed.url_map.iter_rules()}
    assert {"/a2a", "/.well-known/agent.json", "/.well-known/agent-card.json"} <= rules
    assert {"a2a_jsonrpc", "a2a_agent_card"} <= installed.runtime.config.valid_actions
    assert installed.runtime.plugins.distribution_of("a2a") == "lcore-a2a"


def test_a2a_state_is_validated(write_config: ConfigWriter, tmp_path: Path) -> None:
    plugins = load_plugins(entrypoints=False, extra=[lcore_a2a.plugin])
    both = write_config(a2a_state={"sqlite": {"db_path": str(tmp_path / "a.db")},
                                   "postgres": {"db": "d", "user": "u"}})
    with pytest.raises(ConfigError, match="only one of sqlite, postgres"):
        create_app(both, plugins=plugins)
    typo = write_config(a2a_state={"sqlit": {"db_path": "x"}})
    with pytest.raises(ConfigError, match="unknown key"):
        create_app(typo, plugins=load_plugins(entrypoints=False, extra=[lcore_a2a.plugin]))
    missing = write_config(a2a_state={})
    with pytest.raises(ConfigError, match="lcore-a2a"):
        create_app(missing, plugins=load_plugins(entrypoints=False))


# --- ids are scoped by user (issue 23, item 12) -------------------------------------------------


def _identity(user: str) -> dict[str, str]:
    raw = json.dumps({"identity": {"type": "User", "org_id": "org",
                                   "user": {"user_id": user, "username": user}}})
    return {"X-RH-Identity": base64.b64encode(raw.encode()).decode()}


async def test_context_and_task_ids_are_each_users_own(write_config: ConfigWriter,
                                                       llm: Any) -> None:
    """Bob naming Alice's contextId or taskId gets a context of his own and learns nothing of
    hers; a contextId Bob used first is still Alice's own when she uses it; her tasks are
    "not found" for him, exactly as a task that does not exist."""
    import httpx
    from a2a.client import ClientConfig, ClientFactory

    config = write_config(
        authentication={"module": "rh-identity"},
        authorization={"access_rules": [{"role": "*", "actions": [
            "a2a_jsonrpc", "a2a_agent_card", "query", "streaming_query"]}]})
    secret = f"alice's secret {uuid.uuid4().hex[:6]}"
    async with serving(config, headers=_identity("alice")) as lcore, \
            httpx.AsyncClient(timeout=60, headers=_identity("bob")) as bob_http:
        alice = await lcore.client(streaming=False)
        bob = ClientFactory(ClientConfig(httpx_client=bob_http, streaming=False)).create(
            await lcore.card())
        first = await send(alice, secret, "shared-ctx")
        assert first.status.state == TaskState.completed and first.metadata
        hers = first.metadata["conversation_id"]

        his = await send(bob, "what did she ask?", "shared-ctx")
        shown = his.model_dump_json()
        assert his.status.state == TaskState.completed, shown
        assert answer(his) == scripted("what did she ask?")  # a first turn: none of hers
        assert his.metadata and his.metadata["conversation_id"] != hers
        assert hers not in shown and secret not in shown
        again = await send(alice, "and now?", "shared-ctx")  # hers goes on as before
        assert again.metadata and again.metadata["conversation_id"] == hers
        assert answer(again) == scripted("and now?", 2, secret)

        squatted = await send(bob, "mine first", "squatted-ctx")
        assert squatted.status.state == TaskState.completed
        own = await send(alice, "hello", "squatted-ctx")
        assert own.status.state == TaskState.completed, own.model_dump_json()
        assert answer(own) == scripted("hello")

        by_task = user_message("continue her task")
        by_task.task_id = first.id
        [(task, _)] = await collect(bob, by_task)
        shown = task.model_dump_json()
        assert task.status.state == TaskState.completed, shown
        assert task.context_id != "shared-ctx" and hers not in shown and secret not in shown

        async def refusals(task_id: str) -> list[str]:
            out = []
            for call in (bob.get_task(TaskQueryParams(id=task_id)),
                         bob.cancel_task(TaskIdParams(id=task_id))):
                with pytest.raises(A2AClientJSONRPCError) as refused:
                    await call
                out.append(refused.value.error.model_dump_json().replace(task_id, "ID"))
            return out

        assert await refusals(first.id) == await refusals(str(uuid.uuid4()))
        assert "-32001" in (await refusals(first.id))[0]


async def test_attachments_from_parts_are_capped(a2a_server: Any) -> None:
    """More file and data parts than /v2/query takes attachments: -32602 naming the field,
    before any part is decoded."""
    client = await a2a_server.client(streaming=False)
    message = user_message("too many files")
    message.parts.extend(Part(root=FilePart(file=FileWithBytes(
        bytes=base64.b64encode(f"file {i}".encode()).decode(), mime_type="text/plain")))
        for i in range(33))
    with pytest.raises(A2AClientJSONRPCError) as refused:
        await collect(client, message)
    assert refused.value.error.code == -32602
    assert "attachments: at most 32" in str(refused.value.error.data)
