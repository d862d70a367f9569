"""The built-in memory cache passes the cache contract suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lcore_core import ConversationCache
from lcore_core.testing.cache_contract import CacheContract, cache_from_plugins


class TestMemoryCache(CacheContract):
    @pytest.fixture
    async def cache(self) -> AsyncIterator[ConversationCache]:
        # Hermetic: the built-ins only, through the same registration as any plugin.
        cache = cache_from_plugins("memory", {}, entrypoints=False)
        yield cache
        await cache.close()


async def entries_of(cache: ConversationCache, user: str) -> dict[str, list[str]]:
    found = {}
    for info in await cache.list(user):
        found[info.conversation_id] = [e.query for e in await cache.get(user, info.conversation_id)]
    return found


async def test_bounded_by_entries_least_recently_used_conversation_first() -> None:
    from lcore_core.testing.cache_contract import entry

    cache = cache_from_plugins("memory", {"max_entries": 5}, entrypoints=False)
    for n in range(3):
        await cache.insert("u", "a", entry(f"a{n}"))
    await cache.insert("u", "b", entry("b0"))
    await cache.insert("u", "c", entry("c0"))
    assert sum(len(v) for v in (await entries_of(cache, "u")).values()) == 5
    await cache.insert("u", "b", entry("b1"))  # a (least recently used) goes, whole
    assert await entries_of(cache, "u") == {"b": ["question b0", "question b1"],
                                            "c": ["question c0"]}
    # Deleting gives its entries' room back.
    assert await cache.delete("u", "b")
    for n in range(4):
        await cache.insert("u", "d", entry(f"d{n}"))
    assert await entries_of(cache, "u") == {
        "c": ["question c0"], "d": [f"question d{n}" for n in range(4)]}
    # One conversation longer than the bound keeps its newest turns.
    for n in range(4, 8):
        await cache.insert("u", "d", entry(f"d{n}"))
    assert await entries_of(cache, "u") == {"d": [f"question d{n}" for n in range(3, 8)]}
