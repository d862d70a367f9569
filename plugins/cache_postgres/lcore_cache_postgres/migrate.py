"""Upstream's conversation cache into this PostgreSQL cache, for `lcore migrate
--from-upstream`."""

from __future__ import annotations

from lcore_cache_postgres.cache import PostgresCache
from lcore_core import Migration


async def import_cache(migration: Migration) -> None:
    await migration.import_cache(PostgresCache(migration.target.conversation_cache.settings))
