"""Conversation endpoints across users: isolation, and the `*_other_conversations` actions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core import AuthTuple, hookimpl
from lcore_core.app import create_app
from lcore_core.plugins import load_plugins

from .support import lcore_config, started

OWN = ["query", "get_conversation", "list_conversations", "delete_conversation",
       "update_conversation"]


class Auditor:
    """A third-party authorizer: user `auditor` may read (not delete) everyone's conversations."""

    @hookimpl
    def lcore_authorize(self, auth: AuthTuple, action: str) -> bool | None:
        if auth.user_id == "auditor" and action in ("read_other_conversations",
                                                    "list_other_conversations"):
            return True
        return None


@pytest.fixture
async def client(tmp_path: Path, llama_stack_server: Any) -> AsyncIterator[Any]:
    path = lcore_config(tmp_path, "server", llama_stack_server.url,
                        authorization={"always_apply_access_rules": True,
                                       "access_rules": [{"role": "*", "actions": OWN}]})
    app = create_app(path, plugins=load_plugins(entrypoints=False, extra=[Auditor()]))
    async with started(app) as test_app:
        yield test_app.test_client()


async def _ask(client: Any, user: str, query: str) -> str:
    response = await client.post(f"/v2/query?user_id={user}",
                                 json={"query": query, "generate_topic_summary": False})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return str((await response.get_json())["conversation_id"])


@pytest.mark.parametrize("form", ["bare", "upper"])
async def test_other_forms_of_an_id_do_not_open_another_users_conversation(
        client: Any, form: str) -> None:
    """The forms a conversation id may take (without `conv_`, hex digits in upper case) lead
    to the same owner check as the id LCore answered."""
    alice = await _ask(client, "alice", "alice's secret question")
    other = {"bare": alice.removeprefix("conv_"), "upper": alice.upper().replace("CONV_", "conv_")
             }[form]
    assert (await client.get(f"/v1/conversations/{other}?user_id=bob")).status_code == 404
    assert (await client.put(f"/v2/conversations/{other}?user_id=bob",
                             json={"topic_summary": "x"})).status_code == 404
    refused = await client.delete(f"/v1/conversations/{other}?user_id=bob")
    assert (await refused.get_json())["deleted"] is False
    continued = await client.post("/v2/query?user_id=bob",
                                  json={"query": "more", "conversation_id": other})
    assert continued.status_code in (403, 404)
    mine = await client.get(f"/v1/conversations/{other}?user_id=alice")
    assert mine.status_code == 200, await mine.get_data(as_text=True)
    assert len((await mine.get_json())["chat_history"]) == 1


async def test_users_see_only_their_own(client: Any, llm: Any) -> None:
    alice = await _ask(client, "alice", "alice's question")
    bob = await _ask(client, "bob", "bob's question")

    listed = await (await client.get("/v1/conversations?user_id=alice")).get_json()
    assert [c["conversation_id"] for c in listed["conversations"]] == [alice]
    assert listed["conversations"][0]["message_count"] == 1

    # Bob cannot tell Alice's conversation from a missing one: read, rename, delete, continue.
    assert (await client.get(f"/v1/conversations/{alice}?user_id=bob")).status_code == 404
    assert (await client.put(f"/v2/conversations/{alice}?user_id=bob",
                             json={"topic_summary": "x"})).status_code == 404
    refused = await client.delete(f"/v1/conversations/{alice}?user_id=bob")
    assert (refused.status_code, (await refused.get_json())["deleted"]) == (200, False)
    continued = await client.post("/v2/query?user_id=bob",
                                  json={"query": "more", "conversation_id": alice})
    assert continued.status_code in (403, 404)
    # ...and nothing of Alice's was touched by those attempts.
    history = await (await client.get(f"/v1/conversations/{alice}?user_id=alice")).get_json()
    assert [turn["messages"][0]["content"] for turn in history["chat_history"]] == [
        "alice's question"]

    # The auditor may read and list others' conversations through a plugin's authorizer, but
    # delete_other_conversations was granted to nobody.
    audited = await client.get(f"/v1/conversations/{bob}?user_id=auditor")
    assert audited.status_code == 200
    everyone = await (await client.get("/v1/conversations?user_id=auditor")).get_json()
    assert {alice, bob} <= {c["conversation_id"] for c in everyone["conversations"]}
    refused = await client.delete(f"/v1/conversations/{bob}?user_id=auditor")
    assert (await refused.get_json())["deleted"] is False
    assert (await client.get(f"/v1/conversations/{bob}?user_id=bob")).status_code == 200
