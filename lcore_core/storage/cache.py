"""The conversation cache in a `Database` (SQLite or PostgreSQL): what the `sqlite` and
`postgres` cache plugins provide, each on the Database of its section.

Tables keep upstream's column names (`src/cache/*_cache.py`) under LCore's own table names: one
row per turn (`lcore_cache_entry`, ordered by its id) and one per conversation
(`lcore_cache_conversation`: topic summary, message count, newest turn). Several LCore processes
may share them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from lcore_core.cache import CacheEntry, ConversationInfo
from lcore_core.errors import StorageError
from lcore_core.storage.database import Database, Transaction
from lcore_core.storage.postgres import json_without_nul

ENTRY = "lcore_cache_entry"
CONVERSATION = "lcore_cache_conversation"
JSON_FIELDS = ("referenced_documents", "tool_calls", "tool_results", "attachments")
TEXT_FIELDS = ("started_at", "completed_at", "query", "response", "provider", "model")
ENTRY_COLUMNS = ("user_id", "conversation_id", "created_at", *TEXT_FIELDS, *JSON_FIELDS)
RESPONSE = "Conversation cache error"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def migrations(db: Database) -> list[tuple[int, list[Any]]]:
    """The tables earlier LCore (peewee) created, column for column."""
    pg = db.kind == "postgres"
    json_type = "JSONB" if pg else "TEXT"
    return [(1, [
        f'CREATE TABLE IF NOT EXISTS "{ENTRY}" ('
        + ('"id" BIGSERIAL NOT NULL PRIMARY KEY, ' if pg else '"id" INTEGER NOT NULL PRIMARY KEY, ')
        + '"user_id" TEXT NOT NULL, "conversation_id" TEXT NOT NULL, '
        f'"created_at" {db.timestamp} NOT NULL, '
        + ", ".join(f'"{c}" TEXT NOT NULL' for c in TEXT_FIELDS) + ", "
        + ", ".join(f'"{c}" {json_type} NOT NULL' for c in JSON_FIELDS) + ")",
        f'CREATE INDEX IF NOT EXISTS "{ENTRY}_user_id_conversation_id_id" ON "{ENTRY}" '
        '("user_id", "conversation_id", "id")',
        f'CREATE TABLE IF NOT EXISTS "{CONVERSATION}" ("user_id" TEXT NOT NULL, '
        '"conversation_id" TEXT NOT NULL, "topic_summary" TEXT, '
        '"last_message_timestamp" TEXT NOT NULL, '
        f'"last_entry_id" {"BIGINT" if pg else "INTEGER"} NOT NULL, '
        '"message_count" INTEGER NOT NULL, PRIMARY KEY ("user_id", "conversation_id"))',
        f'CREATE INDEX IF NOT EXISTS "{CONVERSATION}_user_id_last_entry_id" ON '
        f'"{CONVERSATION}" ("user_id", "last_entry_id")'])]


# Bump the conversation row for a new turn `EXCLUDED` (concurrent writers may commit out of id
# order: the newest turn's timestamp wins).
_BUMP = (f"ON CONFLICT (user_id, conversation_id) DO UPDATE SET "
         f"message_count = {CONVERSATION}.message_count + 1, "
         f"last_message_timestamp = CASE WHEN {CONVERSATION}.last_entry_id < "
         f"EXCLUDED.last_entry_id THEN EXCLUDED.last_message_timestamp "
         f"ELSE {CONVERSATION}.last_message_timestamp END, "
         f"last_entry_id = CASE WHEN {CONVERSATION}.last_entry_id < EXCLUDED.last_entry_id "
         f"THEN EXCLUDED.last_entry_id ELSE {CONVERSATION}.last_entry_id END")


class SqlCache:
    """A `ConversationCache` in `database`; `component` names its schema version
    (`cache_sqlite`, `cache_postgres`, as earlier LCore recorded them)."""

    def __init__(self, database: Database, *, component: str, where: str,
                 owned: bool = True) -> None:
        """`owned`: `close` closes `database` (False: the runtime's Storage does)."""
        self.db = database
        self.owned = owned
        self.component = component
        self.where = where
        self._set_up = False
        self._setup_lock: asyncio.Lock | None = None
        json_mark = "%s::jsonb" if database.kind == "postgres" else "%s"
        marks = ", ".join(["%s"] * (3 + len(TEXT_FIELDS)) + [json_mark] * len(JSON_FIELDS))
        self._entry_sql = (f'INSERT INTO "{ENTRY}" ({", ".join(ENTRY_COLUMNS)}) '
                           f"VALUES ({marks}) RETURNING id")
        # PostgreSQL: the turn and its conversation row in one statement (one round trip, in
        # autocommit): they appear together or not at all.
        self._insert_pg = (f"WITH turn AS ({self._entry_sql}) INSERT INTO \"{CONVERSATION}\" "
                           "(user_id, conversation_id, last_message_timestamp, last_entry_id, "
                           "message_count) SELECT %s::text, %s::text, %s::text, turn.id, 1 "
                           f"FROM turn {_BUMP}")
        self._conversation_sql = (
            f'INSERT INTO "{CONVERSATION}" (user_id, conversation_id, last_message_timestamp, '
            f"last_entry_id, message_count) VALUES (%s, %s, %s, %s, 1) {_BUMP}")

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except StorageError as exc:
            raise StorageError(RESPONSE, f"{self.where}: {exc.cause}") from exc

    async def setup(self) -> None:
        """Create the tables (idempotent); the first call of any method does it when needed."""
        if self._setup_lock is None:
            self._setup_lock = asyncio.Lock()
        async with self._setup_lock:
            if not self._set_up:
                async with self._guard():
                    await self.db.migrate(self.component, migrations(self.db))
                self._set_up = True

    async def _ready_tables(self) -> None:
        if not self._set_up:
            await self.setup()

    def _values(self, user_id: str, conversation_id: str, entry: CacheEntry,
                created_at: dt.datetime | None = None) -> list[Any]:
        data = entry.to_dict()
        texts = [json.dumps(data[c] or [], ensure_ascii=False) for c in JSON_FIELDS]
        if self.db.kind == "postgres":
            texts = [json_without_nul(text) for text in texts]
        return [user_id, conversation_id, created_at or _utcnow(),
                *(data[c] for c in TEXT_FIELDS), *texts]

    async def insert(self, user_id: str, conversation_id: str, entry: CacheEntry) -> None:
        await self._ready_tables()
        values = self._values(user_id, conversation_id, entry)
        async with self._guard():
            if self.db.kind == "postgres":
                await self.db.execute(self._insert_pg, [*values, user_id, conversation_id,
                                                        entry.completed_at])
                return
            async with self.db.transaction() as tx:
                await self._insert_in(tx, values, entry.completed_at)

    async def _insert_in(self, tx: Transaction, values: list[Any], completed_at: str) -> int:
        [row] = await tx.fetch(self._entry_sql, values)
        await tx.execute(self._conversation_sql, (values[0], values[1], completed_at, row["id"]))
        return int(row["id"])

    async def get(self, user_id: str, conversation_id: str) -> list[CacheEntry]:
        await self._ready_tables()
        async with self._guard():
            rows = await self.db.fetch(
                f'SELECT {", ".join((*TEXT_FIELDS, *JSON_FIELDS))} FROM "{ENTRY}" '
                "WHERE user_id = %s AND conversation_id = %s ORDER BY id",
                (user_id, conversation_id))
        return [_entry(row) for row in rows]

    async def delete(self, user_id: str, conversation_id: str) -> bool:
        await self._ready_tables()
        async with self._guard(), self.db.transaction() as tx:
            # The conversation row first: it waits for inserts in flight (they hold that row),
            # whose turns the entry delete below then sees and removes.
            metadata = await tx.execute(f'DELETE FROM "{CONVERSATION}" WHERE user_id = %s '
                                        "AND conversation_id = %s", (user_id, conversation_id))
            entries = await tx.execute(f'DELETE FROM "{ENTRY}" WHERE user_id = %s '
                                       "AND conversation_id = %s", (user_id, conversation_id))
        return bool(metadata or entries)

    async def list(self, user_id: str) -> list[ConversationInfo]:
        await self._ready_tables()
        async with self._guard():
            rows = await self.db.fetch(
                "SELECT conversation_id, topic_summary, last_message_timestamp, message_count "
                f'FROM "{CONVERSATION}" WHERE user_id = %s ORDER BY last_entry_id DESC',
                (user_id,))
        return [ConversationInfo(r["conversation_id"], r["topic_summary"],
                                 r["last_message_timestamp"], r["message_count"]) for r in rows]

    async def set_topic_summary(self, user_id: str, conversation_id: str, summary: str) -> None:
        await self._ready_tables()
        # An update, not an upsert: a summary alone never creates (or revives) a conversation.
        async with self._guard():
            await self.db.execute(f'UPDATE "{CONVERSATION}" SET topic_summary = %s '
                                  "WHERE user_id = %s AND conversation_id = %s",
                                  (summary, user_id, conversation_id))

    async def ready(self) -> None:
        async with self._guard():
            await self.db.ready()

    async def close(self) -> None:
        if self.owned:
            await self.db.close()

    # --- import (lcore migrate) ---------------------------------------------------------------

    async def holds(self, user_id: str, conversation_id: str) -> bool:
        """Whether the cache has this conversation; creates nothing (for a dry run)."""
        async with self._guard():
            if not await self.db.has_table(CONVERSATION):
                return False
            return await _has(self.db, user_id, conversation_id)

    async def import_conversation(self, user_id: str, conversation_id: str,
                                  entries: Sequence[tuple[dt.datetime | None, CacheEntry]],
                                  topic_summary: str | None,
                                  last_message_timestamp: str) -> bool:
        """Add a whole conversation (turns in order, `created_at` kept) in one transaction,
        unless the cache has it already: then nothing changes and the answer is False. A lock
        per conversation keeps a second import of it out until this one ends."""
        await self._ready_tables()
        lock = f"lcore-cache-import:{user_id}:{conversation_id}"
        async with self._guard(), self.db.transaction(lock=lock) as tx:
            if await _has(tx, user_id, conversation_id):
                return False
            last_id = 0
            for created_at, entry in entries:
                [row] = await tx.fetch(self._entry_sql, self._values(
                    user_id, conversation_id, entry, created_at))
                last_id = int(row["id"])
            await tx.execute(
                f'INSERT INTO "{CONVERSATION}" (user_id, conversation_id, topic_summary, '
                "last_message_timestamp, last_entry_id, message_count) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (user_id, conversation_id, topic_summary, last_message_timestamp, last_id,
                 len(entries)))
        return True


async def _has(db: Database | Transaction, user_id: str, conversation_id: str) -> bool:
    for table in (CONVERSATION, ENTRY):
        if await db.fetch(f'SELECT 1 AS x FROM "{table}" WHERE user_id = %s AND '
                          "conversation_id = %s LIMIT 1", (user_id, conversation_id)):
            return True
    return False


def _entry(row: dict[str, Any]) -> CacheEntry:
    for key in JSON_FIELDS:
        value = row[key]
        row[key] = (json.loads(value) if value else []) if isinstance(value, str | bytes) \
            else (value or [])
    return CacheEntry.from_dict(row)
