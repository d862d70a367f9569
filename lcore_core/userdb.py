"""The user DB: conversation metadata per user, on the `database` section's Database
(`lcore_core.storage`: SQLite by default, PostgreSQL by config)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from lcore_core.storage import Database, Storage, Transaction, iso
from lcore_core.tracing import traced

COMPONENT = "userdb"
TABLE = "lcore_user_conversation"
COLUMNS = ("id", "user_id", "topic_summary", "last_used_model", "last_used_provider",
           "created_at", "last_message_at", "message_count", "response_ids")
LISTED = ", ".join(c for c in COLUMNS if c != "response_ids")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def migrations(database: Database) -> list[tuple[int, list[Any]]]:
    """The user DB's schema, version by version (the DDL peewee wrote in earlier LCore)."""
    stamp = database.timestamp
    return [
        (1, [f'CREATE TABLE IF NOT EXISTS "{TABLE}" ("id" VARCHAR(128) NOT NULL PRIMARY KEY, '
             '"user_id" VARCHAR(256) NOT NULL, "topic_summary" TEXT, '
             '"last_used_model" VARCHAR(256) NOT NULL, '
             '"last_used_provider" VARCHAR(256) NOT NULL, '
             f'"created_at" {stamp} NOT NULL, "last_message_at" {stamp} NOT NULL, '
             '"message_count" INTEGER NOT NULL)',
             f'CREATE INDEX IF NOT EXISTS "{TABLE}_user_id" ON "{TABLE}" ("user_id")',
             f'CREATE INDEX IF NOT EXISTS "{TABLE}_last_message_at" ON "{TABLE}" '
             '("last_message_at")']),
        # 2: the chained responses of a conversation LCore keeps itself.
        (2, [_add_response_ids]),
    ]


async def _add_response_ids(tx: Transaction) -> None:
    await tx.add_column(TABLE, "response_ids", "TEXT")


class UserDB:
    """Conversation ownership and metadata."""

    @classmethod
    def open(cls, settings: Any, storage: Storage | None = None) -> UserDB:
        """The user DB of a `database` section ({sqlite: ...} or {postgres: ...}), on
        `storage`'s shared Database (a Storage of its own when None)."""
        return cls((storage or Storage()).database(settings, where="database"))

    def __init__(self, database: Database) -> None:
        self.db = database
        # The upsert of every turn: one statement, so concurrent turns cannot lose a count.
        # Appending to a NULL chain leaves it NULL (a conversation Llama Stack keeps).
        insert = (f'INSERT INTO "{TABLE}" ({", ".join(COLUMNS)}) '
                  "VALUES (%s, %s, %s, %s, %s, %s, %s, 1, %s) ON CONFLICT (id) DO UPDATE SET "
                  f"message_count = {TABLE}.message_count + 1, "
                  "last_message_at = EXCLUDED.last_message_at, "
                  "last_used_model = EXCLUDED.last_used_model, "
                  "last_used_provider = EXCLUDED.last_used_provider")
        self._upserts = {False: insert,
                         True: insert + f", response_ids = {TABLE}.response_ids || %s"}

    async def setup(self) -> None:
        """Create or upgrade the tables idempotently and record the schema version."""
        await self.db.migrate(COMPONENT, migrations(self.db))

    async def installed(self) -> bool:
        """Whether the tables exist (creating nothing, not even the SQLite file)."""
        return await self.db.has_table(TABLE)

    async def ready(self) -> None:
        await self.db.ready()

    async def close(self) -> None:
        await self.db.close()

    @traced("lcore.storage.userdb.get")
    async def get(self, conversation_id: str) -> dict[str, Any] | None:
        """The conversation's metadata, with `response_ids`: the chained Llama Stack responses,
        oldest first, or None for a conversation kept as a Llama Stack conversation."""
        found = await self.db.fetch(f'SELECT {", ".join(COLUMNS)} FROM "{TABLE}" WHERE id = %s',
                                    (conversation_id,))
        return _with_ids(found[0]) if found else None

    @traced("lcore.storage.userdb.record_turn")
    async def record_turn(self, conversation_id: str, user_id: str, *, model: str,
                          provider: str, topic_summary: str | None = None, chained: bool = False,
                          response_id: str | None = None) -> None:
        """Create the conversation on its first turn, else bump count and last-used fields.

        `chained`: LCore keeps the conversation as a chain of responses; `response_id` (the
        turn's stored response) is appended to it. Whether a conversation is chained is fixed by
        its first turn: appending to a NULL list leaves it NULL.
        """
        now = utcnow()
        params: list[Any] = [conversation_id, user_id, topic_summary, model, provider, now, now,
                             (response_id or "") if chained else None]
        appended = chained and bool(response_id)
        if appended:
            params.append(f" {response_id}")
        await self.db.execute(self._upserts[appended], params)

    @traced("lcore.storage.userdb.find_response")
    async def find_response(self, response_id: str,
                            user_id: str | None) -> dict[str, Any] | None:
        """The chained conversation (of `user_id`, or anyone's with None) holding the stored
        response `response_id`, as `get` gives it; None when no conversation holds it.

        A text search over the chains (a response id is not indexed): LIKE narrows the rows,
        the exact match on the split list decides.
        """
        pattern = "%" + response_id.replace("\\", "\\\\").replace("%", "\\%").replace(
            "_", "\\_") + "%"
        sql = f'SELECT {", ".join(COLUMNS)} FROM "{TABLE}" WHERE response_ids LIKE %s ESCAPE \'\\\''
        params: list[Any] = [pattern]
        if user_id is not None:
            sql += " AND user_id = %s"
            params.append(user_id)
        for row in await self.db.fetch(sql, params):
            found = _with_ids(row)
            if response_id in found["response_ids"]:
                return found
        return None

    @traced("lcore.storage.userdb.list")
    async def list(self, user_id: str | None) -> list[dict[str, Any]]:
        sql = f'SELECT {LISTED} FROM "{TABLE}"'
        params: list[Any] = []
        if user_id is not None:
            sql += " WHERE user_id = %s"
            params.append(user_id)
        return [_row(r) for r in await self.db.fetch(sql + " ORDER BY last_message_at DESC",
                                                     params)]

    @traced("lcore.storage.userdb.delete")
    async def delete(self, conversation_id: str) -> bool:
        return bool(await self.db.execute(f'DELETE FROM "{TABLE}" WHERE id = %s',
                                          (conversation_id,)))

    @traced("lcore.storage.userdb.set_topic_summary")
    async def set_topic_summary(self, conversation_id: str, summary: str, *,
                                only_if_unset: bool = False) -> bool:
        """True when written; `only_if_unset` leaves a topic already there (a user's rename)."""
        unset = " AND topic_summary IS NULL" if only_if_unset else ""
        return bool(await self.db.execute(
            f'UPDATE "{TABLE}" SET topic_summary = %s WHERE id = %s{unset}',
            (summary, conversation_id)))

    async def import_rows(self, rows: Sequence[dict[str, Any]], *,
                          dry_run: bool) -> tuple[int, int]:
        """Insert `rows` (every column) whose id is new: (imported, skipped as present). A row
        written meanwhile wins (ON CONFLICT DO NOTHING)."""
        ids = [row["id"] for row in rows]
        marks = ", ".join(["%s"] * len(ids))
        present = {r["id"] for r in await self.db.fetch(
            f'SELECT id FROM "{TABLE}" WHERE id IN ({marks})', ids)}
        new = [row for row in rows if row["id"] not in present]
        if dry_run or not new:
            return len(new), len(rows) - len(new)
        inserted = await self.db.insert_new(TABLE, COLUMNS, new)
        return inserted, len(rows) - inserted


def _row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "conversation_id": row["id"], "user_id": row["user_id"],
        "topic_summary": row["topic_summary"], "last_used_model": row["last_used_model"],
        "last_used_provider": row["last_used_provider"], "created_at": iso(row["created_at"]),
        "last_message_at": iso(row["last_message_at"]), "message_count": row["message_count"],
    }


def _with_ids(row: dict[str, Any]) -> dict[str, Any]:
    ids = row["response_ids"]
    return {**_row(row), "response_ids": None if ids is None else ids.split()}
