"""Upstream's conversation cache into this PostgreSQL cache, for `lcore migrate --from-upstream`."""

from __future__ import annotations

from lcore_cache_postgres.cache import PostgresCache
from lcore_core import Migration

TARGET = "lcore_cache_entry"
EXISTS = "conversation already in LCore's cache (left as it is)"


async def import_cache(migration: Migration) -> None:
    cache = PostgresCache(migration.target.conversation_cache.settings)
    entries = migration.table("conversation_cache", "cache", TARGET)
    listed = migration.table("conversation_cache", "conversations", "lcore_cache_conversation")
    try:
        if not migration.dry_run:
            await cache.setup()
        for c in migration.cache_conversations(TARGET):
            if migration.dry_run:
                added = not await cache.holds(c.user_id, c.conversation_id)
            else:
                added = await cache.import_conversation(
                    c.user_id, c.conversation_id, c.entries, c.topic_summary,
                    c.last_message_timestamp)
            if added:
                entries.imported += len(c.entries)
                listed.imported += int(c.listed)
            else:
                entries.skip(EXISTS, len(c.entries))
                listed.skip(EXISTS, int(c.listed))
    finally:
        await cache.close()
