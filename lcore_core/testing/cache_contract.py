"""The contract every conversation cache backend must pass.

Subclass `CacheContract` in a test module and override the `cache` fixture so that it yields a
fresh `ConversationCache` (and closes it afterwards); pytest then runs every test below against
it::

    from lcore_core.testing.cache_contract import CacheContract, cache_from_plugins

    class TestMyCache(CacheContract):
        @pytest.fixture
        async def cache(self, tmp_path):
            cache = cache_from_plugins("mine", {"path": str(tmp_path / "c")})
            yield cache
            await cache.close()

Tests use their own random user ids, so a backend may share its storage between tests.
Needs pytest-asyncio (auto mode).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lcore_core.cache import CacheEntry, ConversationCache, ConversationInfo
from lcore_core.config import Config
from lcore_core.testing.storage_contract import assert_not_ready

__all__ = ["CacheContract", "cache_from_plugins", "entry"]

CONCURRENT_TASKS = 40
INSERTS_PER_TASK = 5
ONE_MB = 1024 * 1024


def cache_from_plugins(name: str, settings: dict[str, Any] | None = None, *,
                       entrypoints: bool = True, config: Config | None = None
                       ) -> ConversationCache:
    """Build cache backend `name` as the core does: found through the installed plugins, its
    `conversation_cache.<key>` settings validated with the backend's schema."""
    from lcore_core.plugins import load_plugins

    backend = load_plugins(entrypoints=entrypoints).cache_backends()[name]
    loaded = backend.schema().load(settings or {}) if backend.schema else settings
    return backend.factory(loaded, config if config is not None else Config())


def entry(n: int | str, **fields: Any) -> CacheEntry:
    """A `CacheEntry` for turn `n`; its completed_at grows with `n` when `n` is an int."""
    stamp = f"2025-01-01T00:{int(n) // 60:02d}:{int(n) % 60:02d}Z" if isinstance(n, int) else ""
    values: dict[str, Any] = {"query": f"question {n}", "response": f"answer {n}",
                              "provider": "openai", "model": "gpt-test",
                              "started_at": stamp, "completed_at": stamp}
    values.update(fields)
    return CacheEntry(**values)


def _user() -> str:
    return f"user-{uuid.uuid4().hex}"


def _conv() -> str:
    return f"conv-{uuid.uuid4().hex}"


class CacheContract:
    """Tests every `ConversationCache` backend must pass; override the `cache` fixture."""

    @pytest.fixture
    async def cache(self) -> AsyncIterator[ConversationCache]:
        pytest.fail("a CacheContract subclass must override the `cache` fixture")
        yield  # pragma: no cover

    async def test_is_a_conversation_cache(self, cache: ConversationCache) -> None:
        assert isinstance(cache, ConversationCache)

    @pytest.fixture
    async def unreachable_cache(self) -> AsyncIterator[ConversationCache | None]:
        """Override: this backend on a place it cannot reach (a closed port, a path under a
        file); None leaves `ready()`'s failure unchecked (a memory cache cannot fail it)."""
        yield None

    async def test_ready(self, cache: ConversationCache) -> None:
        await cache.ready()

    async def test_ready_fails_where_it_cannot_serve(
            self, unreachable_cache: ConversationCache | None) -> None:
        await assert_not_ready(unreachable_cache, "unreachable_cache")

    async def test_insert_then_get_in_order(self, cache: ConversationCache) -> None:
        user, conv = _user(), _conv()
        assert await cache.get(user, conv) == []
        entries = [entry(i) for i in range(5)]
        for item in entries:
            await cache.insert(user, conv, item)
        assert await cache.get(user, conv) == entries
        assert await cache.get(user, _conv()) == []

    async def test_users_are_isolated(self, cache: ConversationCache) -> None:
        alice, bob, conv = _user(), _user(), _conv()
        await cache.insert(alice, conv, entry(1, query="alice asks"))
        await cache.insert(bob, conv, entry(2, query="bob asks"))
        await cache.set_topic_summary(alice, conv, "alice's topic")
        assert [e.query for e in await cache.get(alice, conv)] == ["alice asks"]
        assert [e.query for e in await cache.get(bob, conv)] == ["bob asks"]
        [bobs] = await cache.list(bob)
        assert (bobs.topic_summary, bobs.message_count) == (None, 1)
        assert await cache.delete(alice, conv) is True
        assert await cache.get(alice, conv) == []
        assert [e.query for e in await cache.get(bob, conv)] == ["bob asks"]
        assert await cache.list(alice) == []
        assert [c.conversation_id for c in await cache.list(bob)] == [conv]

    async def test_list_newest_first_with_topic_and_count(self,
                                                          cache: ConversationCache) -> None:
        user, first, second = _user(), _conv(), _conv()
        assert await cache.list(user) == []
        await cache.insert(user, first, entry(1))
        await cache.insert(user, second, entry(2))
        await cache.insert(user, first, entry(3))
        await cache.set_topic_summary(user, first, "first topic")
        listed = await cache.list(user)
        assert all(isinstance(c, ConversationInfo) for c in listed)
        assert [(c.conversation_id, c.topic_summary, c.message_count) for c in listed] == [
            (first, "first topic", 2), (second, None, 1)]
        assert listed[0].last_message_timestamp == entry(3).completed_at
        assert listed[1].last_message_timestamp == entry(2).completed_at
        await cache.insert(user, second, entry(4))
        assert [c.conversation_id for c in await cache.list(user)] == [second, first]

    async def test_delete(self, cache: ConversationCache) -> None:
        user, conv, other = _user(), _conv(), _conv()
        await cache.insert(user, conv, entry(1))
        await cache.insert(user, conv, entry(2))
        await cache.insert(user, other, entry(3))
        await cache.set_topic_summary(user, conv, "gone soon")
        assert await cache.delete(user, conv) is True
        assert await cache.delete(user, conv) is False
        assert await cache.delete(user, _conv()) is False
        assert await cache.get(user, conv) == []
        assert [c.conversation_id for c in await cache.list(user)] == [other]
        # A conversation id used again after deletion starts from nothing.
        await cache.insert(user, conv, entry(4))
        assert await cache.get(user, conv) == [entry(4)]
        again = next(c for c in await cache.list(user) if c.conversation_id == conv)
        assert (again.topic_summary, again.message_count) == (None, 1)

    async def test_set_topic_summary(self, cache: ConversationCache) -> None:
        user, conv = _user(), _conv()
        await cache.insert(user, conv, entry(1))
        await cache.set_topic_summary(user, conv, "one")
        await cache.set_topic_summary(user, conv, "two")
        [info] = await cache.list(user)
        assert info.topic_summary == "two"
        assert info.message_count == 1
        # A summary for a conversation without entries creates nothing that is listed.
        await cache.set_topic_summary(user, _conv(), "orphan")
        assert [c.conversation_id for c in await cache.list(user)] == [conv]

    async def test_unicode_round_trip(self, cache: ConversationCache) -> None:
        text = ("emoji 😀👩‍👩‍👧 RTL مرحبا بالعالم שלום CJK 你好 combining e\u0301 "
                "controls \t\n\r\x01\x1b\x1f\x7f quotes ' \" \\ `; DROP TABLE cache; --")
        user, conv = f"{_user()}-Zoë-用户-😀", _conv()
        item = entry(1, query=text, response=text[::-1], provider="ŝ", model="m/ü",
                     referenced_documents=[{"doc_title": text, "doc_url": "https://é.example/ü"}])
        await cache.insert(user, conv, item)
        await cache.set_topic_summary(user, conv, text)
        assert await cache.get(user, conv) == [item]
        [info] = await cache.list(user)
        assert info.topic_summary == text

    async def test_nul_characters_do_not_lose_the_turn(self, cache: ConversationCache) -> None:
        """A NUL (U+0000) anywhere in a turn: the turn is kept, the NUL as is or as U+FFFD
        (PostgreSQL's text and jsonb cannot hold it)."""
        user, conv = f"{_user()}\x00", f"{_conv()}\x00"
        item = entry(1, query="q\x00", response="a\x00", tool_calls=[
            {"id": "c\x00", "name": "n", "args": {"k\x00": "v\x00 \\u0000"}}])
        await cache.insert(user, conv, item)
        await cache.set_topic_summary(user, conv, "topic\x00")
        [back] = await cache.get(user, conv)
        nul = back.query[-1]
        assert nul in ("\x00", "\ufffd")

        def stored(text: str) -> str:
            return text.replace("\x00", nul)

        assert back == entry(1, query=stored("q\x00"), response=stored("a\x00"), tool_calls=[
            {"id": stored("c\x00"), "name": "n",
             "args": {stored("k\x00"): stored("v\x00") + " \\u0000"}}])
        [info] = await cache.list(user)
        assert info.topic_summary == stored("topic\x00")
        assert info.conversation_id == stored(conv)
        assert await cache.delete(user, conv)  # found by the id as given

    async def test_one_megabyte_response(self, cache: ConversationCache) -> None:
        user, conv = _user(), _conv()
        line = "0123456789abcdeé€😀\n"  # multi-byte characters: 1 MiB of text, more bytes
        big = (line * (ONE_MB // len(line) + 1))[:ONE_MB]
        item = entry(1, response=big)
        await cache.insert(user, conv, item)
        [back] = await cache.get(user, conv)
        assert len(back.response) == ONE_MB
        assert back.response == big

    async def test_concurrent_inserts_lose_nothing(self, cache: ConversationCache) -> None:
        user, conv = _user(), _conv()

        async def writer(task: int) -> None:
            for i in range(INSERTS_PER_TASK):
                await cache.insert(user, conv, entry(f"{task}.{i}"))

        await asyncio.gather(*(writer(t) for t in range(CONCURRENT_TASKS)))
        queries = [e.query for e in await cache.get(user, conv)]
        total = CONCURRENT_TASKS * INSERTS_PER_TASK
        assert len(queries) == total
        assert len(set(queries)) == total
        for task in range(CONCURRENT_TASKS):
            mine = [q for q in queries if q.startswith(f"question {task}.")]
            assert mine == [f"question {task}.{i}" for i in range(INSERTS_PER_TASK)]
        [info] = await cache.list(user)
        assert info.message_count == total

    async def test_attachment_bodies_are_not_kept(self, cache: ConversationCache) -> None:
        user, conv = _user(), _conv()
        body = "line é\n" * 1000
        await cache.insert(user, conv, entry(1, attachments=[
            {"attachment_type": "log", "content_type": "text/plain", "content": body}]))
        [back] = await cache.get(user, conv)
        assert back.attachments == [{"attachment_type": "log", "content_type": "text/plain",
                                     "size": len(body.encode())}]

    async def test_entry_fields_round_trip(self, cache: ConversationCache) -> None:
        user, conv = _user(), _conv()
        full = CacheEntry(
            query="What is OpenShift?", response="A Kubernetes distribution.",
            provider="vllm", model="granite-3",
            started_at="2025-03-04T05:06:07.123456+00:00",
            completed_at="2025-03-04T05:06:09.654321+00:00",
            referenced_documents=[{"doc_title": "Docs", "doc_url": "https://docs.example/a"},
                                  {"doc_title": None, "doc_url": "https://docs.example/b"}],
            tool_calls=[{"id": "call_1", "name": "search", "args": {"q": "x", "n": 3},
                         "type": "function_call"}],
            tool_results=[{"id": "call_1", "status": "success", "content": "found",
                           "round": 1, "extra": {"nested": [1, 2.5, True, None]}}],
            attachments=[{"attachment_type": "log", "content_type": "text/plain",
                          "content": "line 1\nline 2"}],
        )
        empty = CacheEntry(query="q", response="")
        await cache.insert(user, conv, full)
        await cache.insert(user, conv, empty)
        assert await cache.get(user, conv) == [full, empty]
