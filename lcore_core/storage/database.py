"""The Database service: one per configured place, shared by the stores that use it.

Stores write their SQL once, with `%s` markers, for both SQLite and PostgreSQL (the common
subset: `ON CONFLICT`, `||`, `LIKE ... ESCAPE`); `kind` and the DDL helpers cover the rest.
Every failure reaches a store as one `StorageError` (its driver's message kept for the log,
not the client) or, for a unique key taken, as `Duplicate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import psycopg
import psycopg.conninfo
import structlog

from lcore_core.errors import StorageError
from lcore_core.storage import postgres
from lcore_core.storage import sqlite as sqlite_
from lcore_core.storage.settings import DEFAULT_SQLITE_PATH, PER_PLACE, StorageSettings

log = structlog.get_logger("lcore.storage")

VERSION_TABLE = "lcore_schema_version"
# A migration step: SQL to run, or a coroutine function given the transaction.
Step = str | Callable[["Transaction"], Awaitable[None]]


class Duplicate(Exception):
    """A row with the same unique key exists."""


@contextlib.contextmanager
def _mapped() -> Any:
    try:
        yield
    except (psycopg.errors.UniqueViolation, sqlite3.IntegrityError) as exc:
        if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" not in str(exc):
            raise StorageError("Database error", f"{type(exc).__name__}: {exc}") from exc
        raise Duplicate(str(exc)) from exc
    except (psycopg.Error, sqlite3.Error, OSError) as exc:
        raise StorageError("Database error", f"{type(exc).__name__}: {exc}") from exc


def _sqlite_sql(sql: str) -> str:
    return sql.replace("%s", "?")


def _sqlite_params(params: Sequence[Any]) -> list[Any]:
    # The text peewee wrote for a datetime (and sqlite3's old default adapter): kept, so rows
    # written by earlier versions sort together with new ones.
    return [p.isoformat(" ") if isinstance(p, dt.datetime) else p for p in params]


def as_datetime(value: Any) -> dt.datetime:
    """A stored time (SQLite gives text) as a naive UTC datetime."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def iso(value: Any) -> str:
    """A stored time as ISO 8601 in UTC (`+00:00`)."""
    if value is None:
        return ""
    try:
        return as_datetime(value).replace(tzinfo=dt.UTC).isoformat()
    except (TypeError, ValueError):
        return str(value)


class Transaction:
    """Statements on one connection inside one transaction (`Database.transaction`)."""

    def __init__(self, database: Database, conn: Any) -> None:
        self.database = database
        self.kind = database.kind
        self._conn = conn

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with _mapped():
            if self.kind == "postgres":
                return await postgres.rows(await self._conn.execute(sql, params))
            return await sqlite_.SQLiteFile.on(self._conn, lambda c: sqlite_.rows(
                c.execute(_sqlite_sql(sql), _sqlite_params(params))))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with _mapped():
            if self.kind == "postgres":
                return int((await self._conn.execute(sql, params)).rowcount)
            return await sqlite_.SQLiteFile.on(self._conn, lambda c: c.execute(
                _sqlite_sql(sql), _sqlite_params(params)).rowcount)

    async def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> int:
        with _mapped():
            if self.kind == "postgres":
                async with self._conn.cursor() as cursor:
                    await cursor.executemany(sql, params)
                    return int(cursor.rowcount)
            return await sqlite_.SQLiteFile.on(self._conn, lambda c: c.executemany(
                _sqlite_sql(sql), [_sqlite_params(p) for p in params]).rowcount)

    async def columns(self, table: str) -> set[str]:
        if self.kind == "postgres":
            found = await self.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                (self.database.settings.namespace, table))
            return {row["column_name"] for row in found}
        return {row["name"] for row in await self.fetch(f'PRAGMA table_info("{table}")')}

    async def add_column(self, table: str, column: str, ddl: str) -> None:
        """Add `column` (`ddl`: its type and constraints) unless the table has it."""
        if column not in await self.columns(table):
            await self.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {ddl}')


class Database:
    """One SQLite file or one PostgreSQL database (and schema), with its connections."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.kind = settings.kind
        self._pg: postgres.ConnectionPool | None = None
        self._file: sqlite_.SQLiteFile | None = None
        if self.kind == "postgres":
            self._pg = postgres.ConnectionPool(
                psycopg.conninfo.make_conninfo(**settings.conninfo()),
                max_size=settings.max_connections, prepare=settings.prepared_statements,
                statement_timeout=settings.statement_timeout)
        else:
            assert settings.path is not None
            self._file = sqlite_.SQLiteFile(settings.path, read_only=settings.read_only)

    @property
    def timestamp(self) -> str:
        """The column type of a naive UTC time."""
        return "TIMESTAMP" if self.kind == "postgres" else "DATETIME"

    @property
    def pool(self) -> postgres.ConnectionPool:
        assert self._pg is not None
        return self._pg

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of one statement, as dicts by column name."""
        with _mapped():
            if self._pg is not None:
                return await self._pg.fetch(sql, params)
            assert self._file is not None
            return await self._file.run(lambda c: sqlite_.rows(
                c.execute(_sqlite_sql(sql), _sqlite_params(params))))

    async def stream(self, sql: str, params: Sequence[Any] = (), *, size: int = 500
                     ) -> AsyncGenerator[list[dict[str, Any]]]:
        """The rows of one query, `size` at a time, for a table too large to hold at once: one
        statement, so one snapshot (PostgreSQL: a server-side cursor in a transaction)."""
        batches = self._pg_stream(sql, params, size) if self._pg is not None \
            else self._sqlite_stream(sql, params, size)
        with _mapped():
            async with contextlib.aclosing(batches):  # a reader stopping early frees the
                async for batch in batches:          # connection now, not when collected
                    yield batch

    async def _pg_stream(self, sql: str, params: Sequence[Any], size: int
                         ) -> AsyncGenerator[list[dict[str, Any]]]:
        async with self.pool.connection() as conn, conn.transaction(), \
                conn.cursor(name="lcore_stream") as cursor:
            await cursor.execute(sql, params)
            while batch := await cursor.fetchmany(size):
                names = [column.name for column in cursor.description or ()]
                yield [dict(zip(names, row, strict=True)) for row in batch]

    async def _sqlite_stream(self, sql: str, params: Sequence[Any], size: int
                             ) -> AsyncGenerator[list[dict[str, Any]]]:
        assert self._file is not None
        async with self._file.reading() as conn:
            cursor = await self._file.on(conn, lambda c: c.execute(
                _sqlite_sql(sql), _sqlite_params(params)))
            while batch := await self._file.on(conn, lambda c: cursor.fetchmany(size)):
                names = [column[0] for column in cursor.description]
                yield [dict(zip(names, row, strict=True)) for row in batch]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the rows it changed."""
        with _mapped():
            if self._pg is not None:
                return await self._pg.execute(sql, params)
            assert self._file is not None
            return await self._file.run(lambda c: c.execute(
                _sqlite_sql(sql), _sqlite_params(params)).rowcount, write=True)

    @contextlib.asynccontextmanager
    async def transaction(self, *, lock: str | None = None) -> AsyncIterator[Transaction]:
        """A transaction; `lock` serialises the transactions naming the same key, across
        processes (PostgreSQL: an advisory lock; SQLite: every transaction holds the write lock
        from the start)."""
        with _mapped():
            if self._pg is not None:
                async with self._pg.connection() as conn, conn.transaction():
                    if lock is not None:
                        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                           (lock,))
                    yield Transaction(self, conn)
                return
            assert self._file is not None
            async with self._file.held() as held:
                # The write lock from the start: a read lock upgraded later can fail at once
                # when another process writes (SQLITE_BUSY, no waiting).
                await self._file.on(held, lambda c: c.execute("BEGIN IMMEDIATE"))
                yield Transaction(self, held)
                await self._file.on(held, lambda c: c.execute("COMMIT"))

    async def insert_new(self, table: str, columns: Sequence[str],
                         rows: Sequence[dict[str, Any]]) -> int:
        """Insert `rows` (their `columns`) in one transaction, each skipped when a row with its
        key is already there (ON CONFLICT DO NOTHING: one written meanwhile wins); the number
        inserted. For imports (`lcore migrate`)."""
        sql = (f'INSERT INTO "{table}" ({", ".join(columns)}) VALUES '
               f'({", ".join(["%s"] * len(columns))}) ON CONFLICT DO NOTHING')
        inserted = 0
        async with self.transaction() as tx:
            for row in rows:
                inserted += await tx.execute(sql, [row[c] for c in columns])
        return inserted

    async def migrate(self, component: str, migrations: Sequence[tuple[int, Sequence[Step]]]
                      ) -> int:
        """Bring `component`'s tables to the newest of `migrations` ((version, steps), oldest
        first); the version is kept in the one `lcore_schema_version` table. Steps should be
        idempotent (`IF NOT EXISTS`, `Transaction.add_column`): a database written before
        versions were recorded runs them all. Safe for replicas starting side by side: one at a
        time goes through (PostgreSQL: a session advisory lock taken before the transaction,
        as CREATE ... IF NOT EXISTS collides on the catalog otherwise). The version reached."""
        if self._pg is None:
            async with self.transaction(lock="schema") as tx:
                return await self._migrate(tx, component, migrations)
        key = f"lcore-schema:{self.settings.namespace}"
        with _mapped():
            async with self._pg.connection() as conn:
                # No statement timeout while migrating: waiting for another replica's migration,
                # or building an index on a large table, may rightly take longer.
                await self._pg.time_out_statements(conn, off=True)
                try:
                    await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
                    try:
                        async with conn.transaction():
                            return await self._migrate(Transaction(self, conn), component,
                                                       migrations)
                    finally:
                        await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
                finally:
                    await self._pg.time_out_statements(conn)

    async def _migrate(self, tx: Transaction, component: str,
                       migrations: Sequence[tuple[int, Sequence[Step]]]) -> int:
        if self.kind == "postgres" and self.settings.namespace != "public":
            quoted = '"' + self.settings.namespace.replace('"', '""') + '"'
            await tx.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await tx.execute(f'CREATE TABLE IF NOT EXISTS "{VERSION_TABLE}" ('
                         '"component" VARCHAR(64) NOT NULL PRIMARY KEY, '
                         '"version" INTEGER NOT NULL)')
        found = await tx.fetch(f'SELECT version FROM "{VERSION_TABLE}" WHERE component = %s',
                               (component,))
        current = int(found[0]["version"]) if found else 0
        newest = max(version for version, _ in migrations)
        for version, steps in migrations:
            if version <= current:
                continue
            for step in steps:
                if isinstance(step, str):
                    await tx.execute(step)
                else:
                    await step(tx)
        if newest > current:
            await tx.execute(
                f'INSERT INTO "{VERSION_TABLE}" (component, version) VALUES (%s, %s) '
                "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                (component, newest))
        return max(newest, current)

    async def version(self, component: str) -> int:
        """The schema version recorded for `component` (0: none)."""
        if not await self.has_table(VERSION_TABLE):
            return 0
        found = await self.fetch(f'SELECT version FROM "{VERSION_TABLE}" WHERE component = %s',
                                 (component,))
        return int(found[0]["version"]) if found else 0

    async def has_table(self, table: str) -> bool:
        """Whether `table` exists (creating nothing, not even the SQLite file)."""
        if self._file is not None:
            if not self._file.exists():
                return False
            return bool(await self.fetch(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = %s", (table,)))
        return bool(await self.fetch(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name = %s", (self.settings.namespace, table)))

    async def ready(self) -> None:
        """Raise `StorageError` if the database cannot serve."""
        await self.fetch("SELECT 1")

    async def close(self) -> None:
        """Close every connection; a later call opens new ones."""
        if self._pg is not None:
            await self._pg.close()
        elif self._file is not None:
            await asyncio.to_thread(self._file.close)


class Storage:
    """The runtime's databases, one per place (`StorageSettings.key`): stores configured
    with the same section share its connections and its `max_connections`."""

    def __init__(self) -> None:
        self._open: dict[tuple[Any, ...], Database] = {}
        self._first: dict[tuple[Any, ...], str] = {}  # the section that opened each place

    def database(self, section: Any, *, where: str = "database",
                 default_path: str | None = DEFAULT_SQLITE_PATH) -> Database:
        """The Database of a section holding `sqlite` or `postgres` (see
        `StorageSettings.from_section`)."""
        settings = StorageSettings.from_section(section, where=where, default_path=default_path)
        key = settings.key()
        if key not in self._open:
            self._open[key] = Database(settings)
            self._first[key] = where
            return self._open[key]
        database = self._open[key]
        ignored = [f"{name} {mine!r} (it has {kept!r})" for name in PER_PLACE
                   if (mine := getattr(settings, name)) != (kept := getattr(database.settings,
                                                                             name))]
        if ignored:
            log.warning("a database shared by two sections keeps its first section's settings",
                        section=where, first=self._first[key], ignored=", ".join(ignored))
        return database

    async def close(self) -> None:
        for database in self._open.values():
            await database.close()
