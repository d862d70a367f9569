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
