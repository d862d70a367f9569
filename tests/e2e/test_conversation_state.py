"""How Llama Stack keeps a conversation's turns: a chain of stored responses that LCore names
(`service.conversation_state: response_chain`, the default) or a Llama Stack conversation
(`llama_stack_conversation`, upstream's way). Server mode, a real Llama Stack, no cache (so the
history is read back from Llama Stack), one app per test on a shared user DB file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_stack_client import NotFoundError

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins

from .support import Lcore, lcore_config, started

CHAIN, CONVERSATION = "response_chain", "llama_stack_conversation"
USER = "00000000-0000-0000-0000-000"

AppFor = Callable[[str], AbstractAsyncContextManager[Lcore]]


@pytest.fixture
def app_for(tmp_path: Path, llama_stack_server: Any) -> AppFor:
    """`async with app_for(state) as lcore`: an app keeping new conversations that way."""
    @asynccontextmanager
    async def start(state: str) -> AsyncIterator[Lcore]:
        workdir = tmp_path / state
        config = lcore_config(
            workdir, "server", llama_stack_server.url,
            service={"host": "127.0.0.1", "port": 8080, "conversation_state": state},
            database={"sqlite": {"db_path": str(tmp_path / "user.db")}},
            conversation_cache={"type": "noop"})
        app = create_app(config, plugins=load_plugins(entrypoints=False))
        async with started(app) as test_app:
            lcore = Lcore(app, test_app.test_client(), "server", workdir)
            yield lcore
            await lcore.runtime.drain()

    return start


def count_llama_calls(lcore: Lcore) -> list[str]:
    """Every HTTP request LCore's Llama Stack client sends from now on, as "METHOD path"."""
    sent: list[str] = []

    async def record(request: httpx.Request) -> None:
        sent.append(f"{request.method} {request.url.path}")

    lcore.runtime.llama.client._client.event_hooks["request"].append(record)
    return sent


async def ask(lcore: Lcore, query: str, conversation_id: str | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"generate_topic_summary": False}
    if conversation_id:
        fields["conversation_id"] = conversation_id
    response = await lcore.query(query, **fields)
    assert response.status_code == 200, await response.get_json()
    return await response.get_json()


async def test_a_chained_turn_is_one_llama_stack_call(app_for: AppFor, llm: Any) -> None:
    async with app_for(CHAIN) as lcore:
        await ask(lcore, "warm the model list")
        sent = count_llama_calls(lcore)
        first = await ask(lcore, "chain one")
        second = await ask(lcore, "chain two", first["conversation_id"])
        third = await lcore.stream("chain three", conversation_id=first["conversation_id"])
        assert sent == ["POST /v1/responses"] * 3
        assert second["response"] == "Scripted answer to: chain two (user turns: 2; first: " \
                                     "chain one)"
        assert third[0] == 200
        assert "Scripted answer to: chain three (user turns: 3; first: chain one)" in [
            e["data"].get("token") for e in third[1] if e["event"] == "turn_complete"]
        # The id has Llama Stack's shape, but Llama Stack holds no conversation of that name.
        conversation_id = first["conversation_id"]
        assert conversation_id.startswith("conv_") and len(conversation_id) == 5 + 48
        with pytest.raises(NotFoundError):
            await lcore.runtime.llama.client.conversations.retrieve(conversation_id)
        chain = (await lcore.runtime.userdb.get(conversation_id))["response_ids"]
        assert len(chain) == 3
        for response_id in chain:
            assert (await lcore.runtime.llama.client.responses.retrieve(response_id)).id \
                == response_id


@pytest.mark.parametrize("state", [CHAIN, CONVERSATION])
async def test_history_and_delete_read_llama_stack(app_for: AppFor, llm: Any,
                                                   state: str) -> None:
    """Without a cache the history comes from Llama Stack, and DELETE removes it there."""
    async with app_for(state) as lcore:
        first = await ask(lcore, f"history one {state}")
        conversation_id = first["conversation_id"]
        second = await ask(lcore, f"history two {state}", conversation_id)
        got = await lcore.client.get(f"/v2/conversations/{conversation_id}")
        assert got.status_code == 200
        turns = (await got.get_json())["chat_history"]
        assert [[m["content"] for m in t["messages"]] for t in turns] == [
            [f"history one {state}", first["response"]],
            [f"history two {state}", second["response"]]]
        chain = (await lcore.runtime.userdb.get(conversation_id))["response_ids"]
        assert (chain is not None) == (state == CHAIN)
        if chain:
            assert turns[0]["model"] == "scripted-llm" and turns[0]["started_at"]
        deleted = await lcore.client.delete(f"/v2/conversations/{conversation_id}")
        assert deleted.status_code == 200
        client = lcore.runtime.llama.client
        for response_id in chain or []:
            with pytest.raises(NotFoundError):
                await client.responses.retrieve(response_id)
        if state == CONVERSATION:
            with pytest.raises(NotFoundError):
                await client.conversations.retrieve(conversation_id)
        assert (await lcore.client.get(f"/v2/conversations/{conversation_id}")
                ).status_code == 404


async def test_a_conversation_keeps_the_way_it_began(app_for: AppFor, llm: Any) -> None:
    """Changing `conversation_state` applies to new conversations; the user DB says how each
    existing one is kept, so both kinds go on after the change."""
    async with app_for(CONVERSATION) as lcore:
        kept = (await ask(lcore, "began as a conversation"))["conversation_id"]
    async with app_for(CHAIN) as lcore:
        chained = (await ask(lcore, "began as a chain"))["conversation_id"]
        later = await ask(lcore, "still a conversation?", kept)
        assert "first: began as a conversation" in later["response"]
        await lcore.runtime.llama.client.conversations.retrieve(kept)
        assert (await lcore.runtime.userdb.get(kept))["response_ids"] is None
    async with app_for(CONVERSATION) as lcore:
        later = await ask(lcore, "still a chain?", chained)
        assert "first: began as a chain" in later["response"]
        assert len((await lcore.runtime.userdb.get(chained))["response_ids"]) == 2


async def test_new_llama_stack_conversations_come_from_the_pool(app_for: AppFor,
                                                                llm: Any) -> None:
    """A first turn takes a conversation created in the background: one call on the hot path."""
    async with app_for(CONVERSATION) as lcore:
        pool = lcore.runtime.llama.conversations
        await ask(lcore, "fill the pool")
        await pool.wait_filled()
        assert len(pool.ready) == pool.size
        head = pool.ready[0]
        # It is a real, empty Llama Stack conversation...
        assert (await lcore.runtime.llama.client.conversations.retrieve(head)).id == head
        sent = count_llama_calls(lcore)
        body = await ask(lcore, "use the pool")
        # ...and the next new conversation is that one, at the cost of the answer alone.
        assert body["conversation_id"] == head
        assert sent[0] == "POST /v1/responses"
        assert head not in pool.ready
        assert (await ask(lcore, "second turn", head))["conversation_id"] == head


async def test_a_lost_chain_response_is_a_clear_404(app_for: AppFor, llm: Any) -> None:
    """A chain whose last response Llama Stack no longer has cannot go on: 404, nothing kept."""
    async with app_for(CHAIN) as lcore:
        conversation_id = (await ask(lcore, "soon orphaned"))["conversation_id"]
        chain = (await lcore.runtime.userdb.get(conversation_id))["response_ids"]
        await lcore.runtime.llama.client.responses.delete(chain[-1])
        response = await lcore.query("go on", conversation_id=conversation_id)
        assert response.status_code == 404
        body = await response.get_json()
        assert chain[-1] in body["detail"]["cause"]
        assert (await lcore.runtime.userdb.get(conversation_id))["message_count"] == 1
