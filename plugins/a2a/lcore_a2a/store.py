"""The A2A context store: (user, `context_id`) -> LCore `conversation_id`, and every task's state.

Context ids are the client's to choose, so each user has their own: the same id sent by two users
names two contexts, and nobody can take over, or learn about, another user's. Task ids are
LCore's (random), and a task is read through its owner (or, for a caller allowed to read other
users' conversations, through no owner).

`MemoryStore` lives in one process; `SqlStore` keeps both tables in a SQLite file or in a
PostgreSQL schema (`namespace`) that several LCore replicas share. Tasks are kept as the JSON of
a2a-sdk's `Task` (camelCase, as on the wire), so a task read back is exactly what was sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import peewee
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase

from lcore_core import StorageError, install_schema

SCHEMA_VERSION = 2  # 2: contexts keyed by user and context id (were: context id alone)
COMPONENT = "a2a"
CONNECT_TIMEOUT_S = 5
T = TypeVar("T")


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


def _models(database: peewee.Database, namespace: str | None) -> tuple[Any, Any, Any, Any]:
    """Model classes bound to `database` (one set per store: no shared global binding)."""

    class Base(peewee.Model):
        class Meta:
            schema = namespace

    Base._meta.set_database(database)

    class Context(Base):
        user_id = peewee.TextField()
        context_id = peewee.TextField()
        conversation_id = peewee.TextField()
        updated_at = peewee.DateTimeField(default=_utcnow)

        class Meta:
            table_name = "lcore_a2a_user_context"
            primary_key = peewee.CompositeKey("user_id", "context_id")

    class OldContext(Base):
        """Schema version 1's table (one namespace of context ids): read once, then dropped."""

        context_id = peewee.CharField(primary_key=True, max_length=256)
        user_id = peewee.TextField()
        conversation_id = peewee.TextField()
        updated_at = peewee.DateTimeField(default=_utcnow)

        class Meta:
            table_name = "lcore_a2a_context"

    class Task(Base):
        task_id = peewee.CharField(primary_key=True, max_length=256)
        context_id = peewee.CharField(max_length=256, index=True)
        user_id = peewee.TextField()
        state = peewee.CharField(max_length=32)
        task = peewee.TextField()
        updated_at = peewee.DateTimeField(default=_utcnow)

        class Meta:
            table_name = "lcore_a2a_task"

    class Version(Base):
        component = peewee.CharField(primary_key=True, max_length=64)
        version = peewee.IntegerField()

        class Meta:
            table_name = "lcore_schema_version"

    return Context, Task, Version, OldContext


class SqlStore:
    """Both tables in one peewee database; every call runs in a worker thread."""

    def __init__(self, database: peewee.Database, *, namespace: str | None = None,
                 where: str = "") -> None:
        self.db = database
        self.namespace = namespace
        self.where = where
        self.Context, self.Task, self.Version, self.OldContext = _models(database, namespace)
        self._setup_lock = threading.Lock()
        self._set_up = False

    def _setup(self) -> None:
        with self._setup_lock:
            if self._set_up:
                return
            with self.db.connection_context():
                install_schema(self.db, [self.Context, self.Task], self.Version, COMPONENT,
                               SCHEMA_VERSION, namespace=self.namespace)
                self._upgrade_contexts()
            self._set_up = True

    def _upgrade_contexts(self) -> None:
        """Move version 1's contexts (each recorded with its user) into the table keyed by user
        and context id, and drop the old table; replicas doing it together take turns."""
        old = self.OldContext
        if not self.db.table_exists(old._meta.table_name, self.namespace):
            return
        with self.db.atomic():
            if isinstance(self.db, peewee.PostgresqlDatabase):
                self.db.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                    (f"lcore-a2a-upgrade:{self.namespace or ''}",))
                if not self.db.table_exists(old._meta.table_name, self.namespace):
                    return
            columns = [self.Context.user_id, self.Context.context_id,
                       self.Context.conversation_id, self.Context.updated_at]
            self.Context.insert_from(
                old.select(old.user_id, old.context_id, old.conversation_id, old.updated_at),
                columns).on_conflict_ignore().execute()
            old.drop_table(safe=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        def call() -> T:
            try:
                self._setup()
                with self.db.connection_context():
                    return fn()
            except (peewee.PeeweeException, MaxConnectionsExceeded, OSError) as exc:
                raise StorageError("A2A state store error",
                                   f"{self.where}: {type(exc).__name__}: {exc}") from exc

        return await asyncio.to_thread(call)

    async def setup(self) -> None:
        """Create the schema and tables (idempotent; several processes may race here)."""
        await self._run(lambda: None)

    async def get_context(self, user_id: str, context_id: str) -> ContextRecord | None:
        C = self.Context

        def fetch() -> ContextRecord | None:
            row = C.get_or_none((C.user_id == user_id) & (C.context_id == context_id))
            return ContextRecord(row.context_id, row.user_id, row.conversation_id) if row else None

        return await self._run(fetch)

    async def save_context(self, record: ContextRecord) -> None:
        C = self.Context
        await self._run(lambda: C.insert(
            context_id=record.context_id, user_id=record.user_id,
            conversation_id=record.conversation_id, updated_at=_utcnow()).on_conflict(
            conflict_target=[C.user_id, C.context_id],
            update={C.conversation_id: record.conversation_id,
                    C.updated_at: _utcnow()}).execute())

    async def get_task(self, user_id: str | None, task_id: str) -> TaskRecord | None:
        T_ = self.Task

        def fetch() -> TaskRecord | None:
            where = T_.task_id == task_id
            if user_id is not None:
                where &= T_.user_id == user_id
            row = T_.get_or_none(where)
            if row is None:
                return None
            return TaskRecord(row.task_id, row.context_id, row.user_id, json.loads(row.task))

        return await self._run(fetch)

    async def save_task(self, record: TaskRecord) -> None:
        T_ = self.Task
        state = str((record.task.get("status") or {}).get("state") or "unknown")
        data = json.dumps(record.task, ensure_ascii=False)
        await self._run(lambda: T_.insert(
            task_id=record.task_id, context_id=record.context_id, user_id=record.user_id,
            state=state, task=data, updated_at=_utcnow()).on_conflict(
            conflict_target=[T_.task_id],
            update={T_.state: state, T_.task: data, T_.updated_at: _utcnow()}).execute())

    async def ready(self) -> None:
        await self._run(lambda: self.db.execute_sql("SELECT 1").fetchone())

    async def close(self) -> None:
        close_all = getattr(self.db, "close_all", None)
        await asyncio.to_thread(close_all if close_all is not None else self.db.close)


def sqlite_store(settings: Any) -> SqlStore:
    path = Path(settings["db_path"]).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    database = peewee.SqliteDatabase(
        str(path), pragmas={"journal_mode": "wal", "busy_timeout": 10_000,
                            "synchronous": "normal"})
    return SqlStore(database, where=f"SQLite {path}")


def postgres_store(settings: Any) -> SqlStore:
    password = settings.get("password") or ""
    if settings.get("password_path"):
        password = Path(settings["password_path"]).read_text(encoding="utf-8").strip()
    kwargs: dict[str, Any] = {
        "host": settings["host"], "port": settings["port"], "user": settings["user"],
        "password": password, "sslmode": settings["ssl_mode"],
        "gssencmode": settings["gss_encmode"], "connect_timeout": CONNECT_TIMEOUT_S,
    }
    if settings.get("ca_cert_path"):
        kwargs["sslrootcert"] = settings["ca_cert_path"]
    database = PooledPostgresqlDatabase(
        settings["db"], max_connections=settings["max_connections"], stale_timeout=300,
        timeout=30, **kwargs)
    namespace = settings.get("namespace") or "public"
    return SqlStore(database, namespace=namespace,
                    where=f"PostgreSQL {settings['host']}:{settings['port']}/{settings['db']} "
                          f"schema {namespace}")


def open_store(settings: Any) -> ContextStore:
    """The store `a2a_state` selects: sqlite, postgres, or memory when neither is given."""
    if settings and settings.get("sqlite"):
        return sqlite_store(settings["sqlite"])
    if settings and settings.get("postgres"):
        return postgres_store(settings["postgres"])
    return MemoryStore()
