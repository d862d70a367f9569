"""Configured shields apply to A2A turns: the plugin runs the same query pipeline."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from a2a.types import TaskArtifactUpdateEvent, TaskState

from lcore_core.testing.llama_stack import LLM_MODEL_ID
from lcore_core.testing.llm import ON_TOPIC_MARKER, TOPIC_CHECK_MARKER, message_text

from .conftest import ConfigWriter, answer, serving, text_of
from .test_a2a import send, stream

pytestmark = pytest.mark.e2e

OFF_TOPIC_ANSWER = "Only questions about LCore, please."
SHIELDS = [
    {"name": "pii", "provider_id": "redaction", "config": {"rules": [
        {"pattern": r"\b\d{4}-\d{4}\b", "replacement": "[CARD]"}]}},
    {"name": "topic", "provider_id": "question_validity", "config": {
        "model_id": LLM_MODEL_ID, "invalid_question_response": OFF_TOPIC_ANSWER,
        "model_prompt": f"{TOPIC_CHECK_MARKER} ${{allowed}} or ${{rejected}}: ${{message}}"}},
]


def answer_calls(llm: Any, needle: str) -> list[Any]:
    return [r for r in llm.chat_requests
            if needle in message_text([m for m in r.messages if m.get("role") == "user"][-1])]


async def test_a2a_turns_are_checked_and_redacted(write_config: ConfigWriter, llm: Any) -> None:
    async with serving(write_config(shields=SHIELDS)) as lcore:
        client = await lcore.client(streaming=False)
        off = f"what is for dinner {uuid.uuid4().hex[:6]}"
        task = await send(client, off)
        assert task.status.state == TaskState.completed
        assert answer(task) == OFF_TOPIC_ANSWER
        assert answer_calls(llm, off) == []

        tag = uuid.uuid4().hex[:6]
        task = await send(client, f"card 1234-5678 {ON_TOPIC_MARKER} {tag}")
        assert answer(task) == (f"Scripted answer to: card [CARD] {ON_TOPIC_MARKER} {tag} "
                                f"(user turns: 1)")
        (call,) = answer_calls(llm, tag)
        assert "1234-5678" not in call.text

        streaming = await lcore.client(streaming=True)
        off = f"sing a song {uuid.uuid4().hex[:6]}"
        events = await stream(streaming, off)
        artifacts = [u for _, u in events if isinstance(u, TaskArtifactUpdateEvent)]
        assert [text_of(a.artifact.parts) for a in artifacts] == [OFF_TOPIC_ANSWER]
        assert events[-1][0].status.state == TaskState.completed
        assert answer_calls(llm, off) == []


def _rpc_message(text: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "message/send",
            "params": {"metadata": metadata, "message": {
                "role": "user", "messageId": uuid.uuid4().hex,
                "parts": [{"kind": "text", "text": text}]}}}


async def test_a2a_shield_ids_that_leave_shields_out_need_override_shields(
        write_config: ConfigWriter, llm: Any) -> None:
    """`shield_ids` in message metadata is judged as on /v2/query: leaving a shield out (`[]`
    or a subset) fails the task with 403 unless the caller has `override_shields`."""
    import lcore_a2a.plugin

    from lcore_core.plugins import load_plugins
    from lcore_core.testing.llama_stack import SHIELD_ID
    from tests.reliability.test_hardening import _HeaderRoles

    rules = [{"role": "*", "actions": ["a2a_jsonrpc", "a2a_message", "a2a_agent_card"]},
             {"role": "trusted", "actions": ["override_shields"]}]
    config = write_config(shields=SHIELDS[:1], authentication={"module": "test-roles"},
                          authorization={"access_rules": rules})
    plugins = load_plugins(entrypoints=False, extra=[lcore_a2a.plugin, _HeaderRoles()])
    async with serving(config, plugins=plugins) as lcore:
        for shield_ids in ([], ["pii"], [SHIELD_ID]):
            response = await lcore.rpc(_rpc_message("hello", {"shield_ids": shield_ids}),
                                       headers={"X-User": "ann", "X-Roles": ""})
            result = response.json()["result"]
            assert result["status"]["state"] == "failed", result
            assert result["metadata"]["error"]["status_code"] == 403
            assert "override_shields" in result["metadata"]["error"]["cause"]
        assert llm.chat_requests == []
        response = await lcore.rpc(_rpc_message("hello", {"shield_ids": ["pii", SHIELD_ID]}),
                                   headers={"X-User": "ann", "X-Roles": ""})
        assert response.json()["result"]["status"]["state"] == "completed"
        response = await lcore.rpc(_rpc_message("hello", {"shield_ids": []}),
                                   headers={"X-User": "bob", "X-Roles": "trusted"})
        assert response.json()["result"]["status"]["state"] == "completed"
