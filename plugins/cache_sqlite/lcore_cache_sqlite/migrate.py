"""Upstream's conversation cache into this SQLite cache, for `lcore migrate --from-upstream`."""

from __future__ import annotations

from lcore_cache_sqlite.cache import SqliteCache
from lcore_core import Migration


async def import_cache(migration: Migration) -> None:
    await migration.import_cache(
        SqliteCache(migration.target.conversation_cache.settings["db_path"]))
