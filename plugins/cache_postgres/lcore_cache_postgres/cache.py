"""The conversation cache in PostgreSQL (peewee over a psycopg2 connection pool).

Tables keep upstream's column names (`src/cache/postgres_cache.py`) under LCore's own table
names, in the configured schema (`namespace`): one row per turn (`lcore_cache_entry`, ordered by
a bigserial id) and one per conversation (`lcore_cache_conversation`: topic summary, message
count, newest turn). Several LCore processes may share them.

Every call runs in a worker thread and borrows a pooled connection, except the insert every
query makes, which runs on the event loop (`AsyncPostgres`). Both pools drop, at checkout, an
idle connection the server has ended, so the cache reconnects by itself after a database
restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import peewee
import psycopg
from playhouse.pool import MaxConnectionsExceeded
from playhouse.postgres_ext import BinaryJSONField

from lcore_core import (
    AsyncPostgres,
    CacheEntry,
    ConversationInfo,
    PostgresPool,
    PreparedQuery,
    StorageError,
    install_schema,
)

SCHEMA_VERSION = 1
COMPONENT = "cache_postgres"
CONNECT_TIMEOUT_S = 5
POOL_WAIT_S = 30
T = TypeVar("T")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _models(database: peewee.Database, namespace: str) -> tuple[Any, Any, Any]:
    """Model classes bound to `database` and `namespace` (one set per cache)."""

    class Base(peewee.Model):
        class Meta:
            schema = namespace

    Base._meta.set_database(database)

    class Entry(Base):
        id = peewee.BigAutoField()
        user_id = peewee.TextField()
        conversation_id = peewee.TextField()
        created_at = peewee.DateTimeField(default=_utcnow)
        started_at = peewee.TextField(default="")
        completed_at = peewee.TextField(default="")
        query = peewee.TextField()
        response = peewee.TextField()
        provider = peewee.TextField(default="")
        model = peewee.TextField(default="")
        referenced_documents = BinaryJSONField(default=list)
        tool_calls = BinaryJSONField(default=list)
        tool_results = BinaryJSONField(default=list)
        attachments = BinaryJSONField(default=list)

        class Meta:
            table_name = "lcore_cache_entry"
            indexes = ((("user_id", "conversation_id", "id"), False),)

    class Conversation(Base):
        user_id = peewee.TextField()
        conversation_id = peewee.TextField()
        topic_summary = peewee.TextField(null=True)
        last_message_timestamp = peewee.TextField(default="")
        last_entry_id = peewee.BigIntegerField(default=0)
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


def open_pool(settings: Any) -> PostgresPool:
    """A connection pool for validated `conversation_cache.postgres` settings."""
    password = settings.get("password") or ""
    if settings.get("password_path"):
        password = Path(settings["password_path"]).expanduser().read_text(
            encoding="utf-8").strip()
    params: dict[str, Any] = {
        "host": settings["host"], "port": settings["port"], "user": settings["user"],
        "password": password, "sslmode": settings["ssl_mode"],
        "gssencmode": settings["gss_encmode"], "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": "lcore-cache-postgres",
    }
    if settings.get("ca_cert_path"):
        params["sslrootcert"] = settings["ca_cert_path"]
    return PostgresPool(settings["db"], max_connections=AsyncPostgres.split(
        settings["max_connections"])[1], timeout=POOL_WAIT_S, **params)


class PostgresCache:
    """A `ConversationCache` in PostgreSQL, shared by every LCore process that uses it."""

    def __init__(self, settings: Any) -> None:
        self.namespace: str = settings["namespace"]
        self.where = f"{settings['host']}:{settings['port']}/{settings['db']}"
        self.db = open_pool(settings)
        # The insert, on the event loop; `max_connections` is shared between the two pools.
        self.pg = AsyncPostgres.sharing(self.db, settings, timeout=POOL_WAIT_S)
        self.Entry, self.Conversation, self.Version = _models(self.db, self.namespace)
        # The insert is built once (peewee took 0.25 ms to build it, more than it runs).
        self._insert = PreparedQuery(
            self._insert_query, ["user_id", "conversation_id", *CacheEntry.__dataclass_fields__],
            dates=["created_at"])
        self._setup_lock = asyncio.Lock()
        self._set_up = False

    # --- plumbing ---------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T], atomic: bool) -> T:
        try:
            with self.db.connection_context():
                if atomic:
                    with self.db.atomic():
                        return fn()
                return fn()
        except (peewee.PeeweeException, MaxConnectionsExceeded) as exc:
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> StorageError:
        return StorageError("Conversation cache error",
                            f"PostgreSQL {self.where}: {type(exc).__name__}: {str(exc).strip()}")

    async def _run(self, fn: Callable[[], T], *, atomic: bool = False) -> T:
        if not self._set_up:
            await self.setup()
        return await asyncio.to_thread(self._call, fn, atomic)

    def _create(self) -> None:
        install_schema(self.db, [self.Entry, self.Conversation], self.Version, COMPONENT,
                       SCHEMA_VERSION, namespace=self.namespace)

    async def setup(self) -> None:
        """Create the schema and tables (idempotent); the first call does it when needed."""
        async with self._setup_lock:
            if not self._set_up:
                await asyncio.to_thread(self._call, self._create, False)
                self._set_up = True

    # --- ConversationCache --------------------------------------------------------------------

    async def insert(self, user_id: str, conversation_id: str, entry: CacheEntry) -> None:
        values = {**entry.to_dict(), "user_id": user_id, "conversation_id": conversation_id,
                  "created_at": _utcnow()}
        if not self._set_up:
            await self.setup()
        try:
            await self.pg.execute(self._insert.sql, self._insert.params(values))
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def _insert_query(self, *, user_id: Any, conversation_id: Any, created_at: Any,
                      **entry: Any) -> peewee.Query:
        """One statement in autocommit, one round trip: the turn (inserted in a CTE) and its
        conversation row appear together or not at all."""
        E, C = self.Entry, self.Conversation
        turn = E.insert(user_id=user_id, conversation_id=conversation_id,
                        created_at=created_at, **entry).returning(E.id).cte("turn")
        new = C.insert_from(
            peewee.Select((turn,), (peewee.Value(user_id), peewee.Value(conversation_id),
                                    peewee.Value(entry["completed_at"]), turn.c.id,
                                    peewee.Value(1))),
            fields=[C.user_id, C.conversation_id, C.last_message_timestamp, C.last_entry_id,
                    C.message_count])
        return new.on_conflict(
            conflict_target=[C.user_id, C.conversation_id],
            update={C.message_count: C.message_count + 1,
                    # Concurrent writers may commit out of id order.
                    C.last_entry_id: peewee.fn.GREATEST(C.last_entry_id,
                                                        peewee.EXCLUDED.last_entry_id),
                    C.last_message_timestamp: peewee.Case(
                        None, [(C.last_entry_id < peewee.EXCLUDED.last_entry_id,
                                peewee.EXCLUDED.last_message_timestamp)],
                        C.last_message_timestamp)}).with_cte(turn).as_rowcount()

    async def get(self, user_id: str, conversation_id: str) -> list[CacheEntry]:
        E = self.Entry

        def fetch() -> list[CacheEntry]:
            rows = (E.select().where((E.user_id == user_id)
                                     & (E.conversation_id == conversation_id))
                    .order_by(E.id).dicts())
            return [CacheEntry.from_dict(row) for row in rows]

        return await self._run(fetch)

    async def delete(self, user_id: str, conversation_id: str) -> bool:
        E, C = self.Entry, self.Conversation

        def delete() -> bool:
            # The conversation row first: it waits for inserts in flight (they hold that row),
            # whose turns the entry delete below then sees and removes.
            metadata = C.delete().where((C.user_id == user_id)
                                        & (C.conversation_id == conversation_id)).execute()
            entries = E.delete().where((E.user_id == user_id)
                                       & (E.conversation_id == conversation_id)).execute()
            return bool(metadata or entries)

        return await self._run(delete, atomic=True)

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
            (C.user_id == user_id) & (C.conversation_id == conversation_id)).execute())

    async def ready(self) -> None:
        await self._run(lambda: self.db.execute_sql("SELECT 1").fetchone())

    # --- import (lcore migrate) ---------------------------------------------------------------

    async def holds(self, user_id: str, conversation_id: str) -> bool:
        """Whether the cache has this conversation; creates nothing (for a dry run)."""
        E, C = self.Entry, self.Conversation

        def check() -> bool:
            if not self.db.table_exists(C._meta.table_name, self.namespace):
                return False
            return _has(E, C, user_id, conversation_id)

        return await asyncio.to_thread(self._call, check, False)

    async def import_conversation(self, user_id: str, conversation_id: str,
                                  entries: Sequence[tuple[dt.datetime | None, CacheEntry]],
                                  topic_summary: str | None,
                                  last_message_timestamp: str) -> bool:
        """Add a whole conversation (turns in order, `created_at` kept) in one transaction,
        unless the cache has it already: then nothing changes and the answer is False."""
        E, C = self.Entry, self.Conversation

        def write() -> bool:
            # A lock per conversation keeps a second import of it (another `lcore migrate`)
            # out until this transaction ends; the check below then sees its rows.
            self.db.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                (f"lcore-cache-import:{user_id}:{conversation_id}",))
            if _has(E, C, user_id, conversation_id):
                return False
            last_id = 0
            for created_at, entry in entries:
                last_id = E.insert(user_id=user_id, conversation_id=conversation_id,
                                   created_at=created_at or _utcnow(),
                                   **entry.to_dict()).execute()
            C.insert(user_id=user_id, conversation_id=conversation_id,
                     topic_summary=topic_summary, last_message_timestamp=last_message_timestamp,
                     last_entry_id=last_id, message_count=len(entries)).execute()
            return True

        return bool(await self._run(write, atomic=True))

    async def close(self) -> None:
        await self.pg.close()
        await asyncio.to_thread(self.db.close_all)


def _has(E: Any, C: Any, user_id: str, conversation_id: str) -> bool:
    return bool(
        C.select().where((C.user_id == user_id) & (C.conversation_id == conversation_id)).exists()
        or E.select().where((E.user_id == user_id)
                            & (E.conversation_id == conversation_id)).exists())
