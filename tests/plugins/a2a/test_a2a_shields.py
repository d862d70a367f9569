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
