"""The conversation cache in one SQLite file (peewee; every call runs in a worker thread).

Tables keep upstream's column names (`src/cache/sqlite_cache.py`) under LCore's own table names:
one row per turn (`lcore_cache_entry`, ordered by an autoincrement id) and one per conversation
(`lcore_cache_conversation`: topic summary, message count, newest turn).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import peewee

from lcore_core import CacheEntry, ConversationInfo, StorageError, install_schema

SCHEMA_VERSION = 1
COMPONENT = "cache_sqlite"
JSON_FIELDS = ("referenced_documents", "tool_calls", "tool_results", "attachments")
T = TypeVar("T")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _models(database: peewee.Database) -> tuple[Any, Any, Any]:
    """Model classes bound to `database` (one set per cache: no shared global binding)."""

    class Base(peewee.Model):
        class Meta:
            pass

    Base._meta.set_database(database)

    class Entry(Base):
        id = peewee.AutoField()
        user_id = peewee.TextField()
        conversation_id = peewee.TextField()
        created_at = peewee.DateTimeField(default=_utcnow)
        started_at = peewee.TextField(default="")
        completed_at = peewee.TextField(default="")
        query = peewee.TextField()
        response = peewee.TextField()
        provider = peewee.TextField(default="")
        model = peewee.TextField(default="")
        referenced_documents = peewee.TextField(default="[]")
        tool_calls = peewee.TextField(default="[]")
        tool_results = peewee.TextField(default="[]")
        attachments = peewee.TextField(default="[]")

        class Meta:
            table_name = "lcore_cache_entry"
            indexes = ((("user_id", "conversation_id", "id"), False),)

    class Conversation(Base):
        user_id = peewee.TextField()
        conversation_id = peewee.TextField()
        topic_summary = peewee.TextField(null=True)
        last_message_timestamp = peewee.TextField(default="")
        last_entry_id = peewee.IntegerField(default=0)
        message_count = peewee.IntegerField(default=0)

        class Meta:
            table_name = "lcore_cache_conversation"
            primary_key = peewee.CompositeKey("user_id", "conversation_id")
            indexes = ((("user_id", "last_entry_id"), False),)

    class Version(Base):
        component = peewee.CharField(primary_key=True, max_length=64)
        version = peewee.IntegerField()

        class Meta:
            table_name = "lcore_schema_version"

    return Entry, Conversation, Version


class SqliteCache:
    """A `ConversationCache` in a SQLite file; several processes may share the file."""

    def __init__(self, db_path: str | Path) -> None:
        self.path = Path(db_path).expanduser()
        # BEGIN IMMEDIATE takes the write lock up front, so two writers never deadlock on a
        # read-to-write upgrade; busy_timeout makes another process's writer wait, not fail.
        self.db = peewee.SqliteDatabase(
            str(self.path), lock_type="IMMEDIATE",
            pragmas={"journal_mode": "wal", "busy_timeout": 10_000, "synchronous": "normal"})
        self.Entry, self.Conversation, self.Version = _models(self.db)
        # Writers of this process queue here instead of spinning in SQLite's busy handler.
        self._write_lock = threading.Lock()
        self._setup_lock = threading.Lock()
        self._set_up = False

    # --- plumbing ---------------------------------------------------------------------------

    def _setup(self) -> None:
        with self._setup_lock:
            if self._set_up:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._write_lock, self.db.connection_context():
                install_schema(self.db, [self.Entry, self.Conversation], self.Version,
                               COMPONENT, SCHEMA_VERSION)
            self._set_up = True

    async def _run(self, fn: Callable[[], T], *, write: bool = False) -> T:
        def call() -> T:
            try:
                self._setup()
                if write:
                    with self._write_lock, self.db.connection_context(), self.db.atomic():
                        return fn()
                with self.db.connection_context():
                    return fn()
            except (peewee.PeeweeException, OSError) as exc:
                raise StorageError("Conversation cache error",
                                   f"SQLite {self.path}: {type(exc).__name__}: {exc}") from exc

        return await asyncio.to_thread(call)

    async def setup(self) -> None:
        """Create the file and tables (idempotent); every other call does it when needed."""
        await self._run(lambda: None)

    # --- ConversationCache --------------------------------------------------------------------

    async def insert(self, user_id: str, conversation_id: str, entry: CacheEntry) -> None:
        data = entry.to_dict()
        for key in JSON_FIELDS:
            data[key] = json.dumps(data[key] or [], ensure_ascii=False)
        E, C = self.Entry, self.Conversation

        def insert() -> None:
            entry_id = E.insert(user_id=user_id, conversation_id=conversation_id,
                                **data).execute()
            C.insert(user_id=user_id, conversation_id=conversation_id,
                     last_message_timestamp=entry.completed_at, last_entry_id=entry_id,
                     message_count=1).on_conflict(
                conflict_target=[C.user_id, C.conversation_id],
                update={C.message_count: C.message_count + 1, C.last_entry_id: entry_id,
                        C.last_message_timestamp: entry.completed_at}).execute()

        await self._run(insert, write=True)

    async def get(self, user_id: str, conversation_id: str) -> list[CacheEntry]:
        E = self.Entry

        def fetch() -> list[CacheEntry]:
            rows = (E.select().where((E.user_id == user_id)
                                     & (E.conversation_id == conversation_id))
                    .order_by(E.id).dicts())
            return [_entry(row) for row in rows]

        return await self._run(fetch)

    async def delete(self, user_id: str, conversation_id: str) -> bool:
        E, C = self.Entry, self.Conversation

        def delete() -> bool:
            metadata = C.delete().where((C.user_id == user_id)
                                        & (C.conversation_id == conversation_id)).execute()
            entries = E.delete().where((E.user_id == user_id)
                                       & (E.conversation_id == conversation_id)).execute()
            return bool(metadata or entries)

        return await self._run(delete, write=True)

    async def list(self, user_id: str) -> list[ConversationInfo]:
        C = self.Conversation

        def fetch() -> list[ConversationInfo]:
            rows = C.select().where(C.user_id == user_id).order_by(C.last_entry_id.desc())
            return [ConversationInfo(r.conversation_id, r.topic_summary,
                                     r.last_message_timestamp, r.message_count) for r in rows]

        return await self._run(fetch)

    async def set_topic_summary(self, user_id: str, conversation_id: str, summary: str) -> None:
        C = self.Conversation
        # An update, not an upsert: a summary alone never creates (or revives) a conversation.
        await self._run(lambda: C.update(topic_summary=summary).where(
            (C.user_id == user_id) & (C.conversation_id == conversation_id)).execute(),
            write=True)

    async def ready(self) -> None:
        await self._run(lambda: self.db.execute_sql("SELECT 1").fetchone())

    # --- import (lcore migrate) ---------------------------------------------------------------

    async def holds(self, user_id: str, conversation_id: str) -> bool:
        """Whether the cache has this conversation; creates nothing (for a dry run)."""
        E, C = self.Entry, self.Conversation

        def check() -> bool:
            if not self.path.exists():
                return False
            try:
                with self.db.connection_context():
                    if not self.db.table_exists(C._meta.table_name):
                        return False
                    return _has(E, C, user_id, conversation_id)
            except peewee.PeeweeException as exc:
                raise StorageError("Conversation cache error",
                                   f"SQLite {self.path}: {type(exc).__name__}: {exc}") from exc

        return await asyncio.to_thread(check)

    async def import_conversation(self, user_id: str, conversation_id: str,
                                  entries: Sequence[tuple[dt.datetime | None, CacheEntry]],
                                  topic_summary: str | None,
                                  last_message_timestamp: str) -> bool:
        """Add a whole conversation (turns in order, `created_at` kept) in one transaction,
        unless the cache has it already: then nothing changes and the answer is False."""
        E, C = self.Entry, self.Conversation

        def write() -> bool:
            if _has(E, C, user_id, conversation_id):
                return False
            last_id = 0
            for created_at, entry in entries:
                data = entry.to_dict()
                for key in JSON_FIELDS:
                    data[key] = json.dumps(data[key] or [], ensure_ascii=False)
                last_id = E.insert(user_id=user_id, conversation_id=conversation_id,
                                   created_at=created_at or _utcnow(), **data).execute()
            C.insert(user_id=user_id, conversation_id=conversation_id,
                     topic_summary=topic_summary, last_message_timestamp=last_message_timestamp,
                     last_entry_id=last_id, message_count=len(entries)).execute()
            return True

        return await self._run(write, write=True)

    async def close(self) -> None:
        await asyncio.to_thread(self.db.close)


def _has(E: Any, C: Any, user_id: str, conversation_id: str) -> bool:
    return bool(
        C.select().where((C.user_id == user_id) & (C.conversation_id == conversation_id)).exists()
        or E.select().where((E.user_id == user_id)
                            & (E.conversation_id == conversation_id)).exists())


def _entry(row: dict[str, Any]) -> CacheEntry:
    for key in JSON_FIELDS:
        row[key] = json.loads(row[key]) if row[key] else []
    return CacheEntry.from_dict(row)
