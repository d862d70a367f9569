"""The A2A context store: (user, `context_id`) -> LCore `conversation_id`, and every task's state.

Context ids are the client's to choose, so each user has their own: the same id sent by two users
names two contexts, and nobody can take over, or learn about, another user's. Task ids are
LCore's (random), and a task is read through its owner (or, for a caller allowed to read other
users' conversations, through no owner).

`MemoryStore` lives in one process; `SqlStore` keeps both tables in the `a2a_state` section's
Database (`lcore_core.storage`): a SQLite file or a PostgreSQL schema (`namespace`) that several
LCore replicas share. Tasks are kept as the JSON of
a2a-sdk's `Task` (camelCase, as on the wire), so a task read back is exactly what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from lcore_core import Database, Storage, StorageError, Transaction

SCHEMA_VERSION = 2  # 2: contexts keyed by user and context id (were: context id alone)
COMPONENT = "a2a"
CONTEXT = "lcore_a2a_user_context"
OLD_CONTEXT = "lcore_a2a_context"  # version 1's (one namespace of context ids)
TASK = "lcore_a2a_task"


@dataclass(frozen=True)
class ContextRecord:
    context_id: str
    user_id: str
    conversation_id: str


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    context_id: str
    user_id: str
    task: dict[str, Any]


class ContextStore(Protocol):
    """What the A2A endpoint needs from a store; every method may raise `StorageError`."""

    async def setup(self) -> None: ...
    async def get_context(self, user_id: str, context_id: str) -> ContextRecord | None: ...
    async def save_context(self, record: ContextRecord) -> None: ...
    async def get_task(self, user_id: str | None, task_id: str) -> TaskRecord | None:
        """The task if `user_id` owns it (any owner's when `user_id` is None)."""
        ...

    async def save_task(self, record: TaskRecord) -> None: ...
    async def ready(self) -> None: ...
    async def close(self) -> None: ...


class MemoryStore:
    """In this process only; the least recently saved tasks and contexts are forgotten beyond
    `max_tasks` and `max_contexts`."""

    def __init__(self, max_tasks: int = 10_000, max_contexts: int = 10_000) -> None:
        self.max_tasks = max_tasks
        self.max_contexts = max_contexts
        self._contexts: OrderedDict[tuple[str, str], ContextRecord] = OrderedDict()
        self._tasks: OrderedDict[str, TaskRecord] = OrderedDict()

    async def setup(self) -> None:
        return None

    async def get_context(self, user_id: str, context_id: str) -> ContextRecord | None:
        return self._contexts.get((user_id, context_id))

    async def save_context(self, record: ContextRecord) -> None:
        key = (record.user_id, record.context_id)
        self._contexts[key] = record
        self._contexts.move_to_end(key)
        while len(self._contexts) > self.max_contexts:
            self._contexts.popitem(last=False)

    async def get_task(self, user_id: str | None, task_id: str) -> TaskRecord | None:
        record = self._tasks.get(task_id)
        return record if record and user_id in (None, record.user_id) else None

    async def save_task(self, record: TaskRecord) -> None:
        self._tasks[record.task_id] = record
        self._tasks.move_to_end(record.task_id)
        while len(self._tasks) > self.max_tasks:
            self._tasks.popitem(last=False)

    async def ready(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def migrations(db: Database) -> list[tuple[int, list[Any]]]:
    """The tables earlier LCore (peewee) created, column for column."""
    return [
        (1, [f'CREATE TABLE IF NOT EXISTS "{TASK}" ("task_id" VARCHAR(256) NOT NULL PRIMARY KEY, '
             '"context_id" VARCHAR(256) NOT NULL, "user_id" TEXT NOT NULL, '
             '"state" VARCHAR(32) NOT NULL, "task" TEXT NOT NULL, '
             f'"updated_at" {db.timestamp} NOT NULL)',
             f'CREATE INDEX IF NOT EXISTS "{TASK}_context_id" ON "{TASK}" ("context_id")']),
        # 2: contexts keyed by user and context id.
        (2, [f'CREATE TABLE IF NOT EXISTS "{CONTEXT}" ("user_id" TEXT NOT NULL, '
             '"context_id" TEXT NOT NULL, "conversation_id" TEXT NOT NULL, '
             f'"updated_at" {db.timestamp} NOT NULL, PRIMARY KEY ("user_id", "context_id"))']),
    ]


class SqlStore:
    """Both tables in one Database (shared with the other stores on its place)."""

    def __init__(self, database: Database, *, where: str = "", owned: bool = True) -> None:
        """`owned`: `close` closes `database` (False: the runtime's Storage does)."""
        self.db = database
        self.where = where
        self.owned = owned
        self._set_up = False
        self._setup_lock: asyncio.Lock | None = None

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except StorageError as exc:
            raise StorageError("A2A state store error", f"{self.where}: {exc.cause}") from exc

    async def setup(self) -> None:
        """Create the schema and tables (idempotent; several processes may race here)."""
        if self._setup_lock is None:
            self._setup_lock = asyncio.Lock()
        async with self._setup_lock, self._guard():
            if self._set_up:
                return
            await self.db.migrate(COMPONENT, migrations(self.db))
            await self._upgrade_contexts()
            self._set_up = True

    async def _upgrade_contexts(self) -> None:
        """Move version 1's contexts (each recorded with its user) into the table keyed by user
        and context id, and drop the old table (a version-1 replica may still have written to
        it); replicas doing it together take turns."""
        if not await self.db.has_table(OLD_CONTEXT):
            return
        async with self.db.transaction(lock="lcore-a2a-upgrade") as tx:
            if not await _has_table(tx, OLD_CONTEXT):
                return
            await tx.execute(
                f'INSERT INTO "{CONTEXT}" (user_id, context_id, conversation_id, updated_at) '
                f'SELECT user_id, context_id, conversation_id, updated_at FROM "{OLD_CONTEXT}" '
                "WHERE true ON CONFLICT DO NOTHING")  # WHERE: SQLite's parser needs it there
            await tx.execute(f'DROP TABLE IF EXISTS "{OLD_CONTEXT}"')

    async def _ready_tables(self) -> None:
        if not self._set_up:
            await self.setup()

    async def get_context(self, user_id: str, context_id: str) -> ContextRecord | None:
        await self._ready_tables()
        async with self._guard():
            rows = await self.db.fetch(
                f'SELECT conversation_id FROM "{CONTEXT}" WHERE user_id = %s AND context_id = %s',
                (user_id, context_id))
        return ContextRecord(context_id, user_id, rows[0]["conversation_id"]) if rows else None

    async def save_context(self, record: ContextRecord) -> None:
        await self._ready_tables()
        async with self._guard():
            await self.db.execute(
                f'INSERT INTO "{CONTEXT}" (user_id, context_id, conversation_id, updated_at) '
                "VALUES (%s, %s, %s, %s) ON CONFLICT (user_id, context_id) DO UPDATE SET "
                "conversation_id = EXCLUDED.conversation_id, updated_at = EXCLUDED.updated_at",
                (record.user_id, record.context_id, record.conversation_id, _utcnow()))

    async def get_task(self, user_id: str | None, task_id: str) -> TaskRecord | None:
        await self._ready_tables()
        sql = f'SELECT task_id, context_id, user_id, task FROM "{TASK}" WHERE task_id = %s'
        params: list[Any] = [task_id]
        if user_id is not None:
            sql += " AND user_id = %s"
            params.append(user_id)
        async with self._guard():
            rows = await self.db.fetch(sql, params)
        if not rows:
            return None
        row = rows[0]
        return TaskRecord(row["task_id"], row["context_id"], row["user_id"],
                          json.loads(row["task"]))

    async def save_task(self, record: TaskRecord) -> None:
        await self._ready_tables()
        state = str((record.task.get("status") or {}).get("state") or "unknown")
        async with self._guard():
            await self.db.execute(
                f'INSERT INTO "{TASK}" (task_id, context_id, user_id, state, task, updated_at) '
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (task_id) DO UPDATE SET "
                "state = EXCLUDED.state, task = EXCLUDED.task, updated_at = EXCLUDED.updated_at",
                (record.task_id, record.context_id, record.user_id, state,
                 json.dumps(record.task, ensure_ascii=False), _utcnow()))

    async def ready(self) -> None:
        async with self._guard():
            await self.db.ready()

    async def close(self) -> None:
        if self.owned:
            await self.db.close()

    # --- import (lcore migrate) ---------------------------------------------------------------

    async def has_context(self, user_id: str, context_id: str) -> bool:
        """Whether the context is there; creates nothing, not even the SQLite file."""
        async with self._guard():
            return await self.db.has_table(CONTEXT) and bool(await self.db.fetch(
                f'SELECT 1 AS x FROM "{CONTEXT}" WHERE user_id = %s AND context_id = %s',
                (user_id, context_id)))

    async def has_task(self, task_id: str) -> bool:
        """Whether the task is there; creates nothing, not even the SQLite file."""
        async with self._guard():
            return await self.db.has_table(TASK) and bool(await self.db.fetch(
                f'SELECT 1 AS x FROM "{TASK}" WHERE task_id = %s', (task_id,)))

    async def add_context(self, record: ContextRecord) -> bool:
        """Insert unless the key is taken (then the row LCore has wins)."""
        await self._ready_tables()
        async with self._guard():
            return bool(await self.db.execute(
                f'INSERT INTO "{CONTEXT}" (user_id, context_id, conversation_id, updated_at) '
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (record.user_id, record.context_id, record.conversation_id, _utcnow())))

    async def add_task(self, record: TaskRecord, state: str) -> bool:
        """Insert unless the key is taken (then the row LCore has wins)."""
        await self._ready_tables()
        async with self._guard():
            return bool(await self.db.execute(
                f'INSERT INTO "{TASK}" (task_id, context_id, user_id, state, task, updated_at) '
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (record.task_id, record.context_id, record.user_id, state,
                 json.dumps(record.task, ensure_ascii=False), _utcnow())))


async def _has_table(tx: Transaction, table: str) -> bool:
    if tx.kind == "postgres":
        return bool(await tx.fetch(
            "SELECT 1 AS x FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name = %s", (tx.database.settings.namespace, table)))
    return bool(await tx.fetch(
        "SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = %s", (table,)))


def open_store(settings: Any, storage: Storage | None = None) -> ContextStore:
    """The store `a2a_state` selects: sqlite, postgres, or memory when neither is given. On
    `storage` (the runtime's) when given; a store of its own otherwise."""
    if not settings or not (settings.get("sqlite") or settings.get("postgres")):
        return MemoryStore()
    database = (storage or Storage()).database(settings, where="a2a_state")
    found = database.settings
    where = (f"SQLite {found.path}" if found.kind == "sqlite" else
             f"PostgreSQL {found.host}:{found.port}/{found.db} schema {found.namespace}")
    return SqlStore(database, where=where, owned=storage is None)
