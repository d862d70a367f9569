"""Upstream's databases, opened read-only, and the conversions of their values.

Upstream (Lightspeed Core Stack) keeps each kind of data where one section of its
lightspeed-stack.yaml says: a SQLite file or a PostgreSQL database (its tables in the schema
`namespace`). The migration only reads them: a SQLite file is opened with `mode=ro`, a
PostgreSQL session is read-only, so a mistaken configuration cannot change upstream's data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

from lcore_core.errors import ConfigError, StorageError
from lcore_core.schemas import conversation_key
from lcore_core.storage import Database, StorageSettings

BATCH = 500


class MigrationError(Exception):
    """The migration cannot go on: an unreachable database, a missing table, a wrong setting."""


class UpstreamDatabase:
    """One upstream database, read through LCore's storage service; `where` names it in
    messages. The first read connects (a failure is "cannot connect")."""

    def __init__(self, database: Database, where: str, schemas: tuple[str, ...] = ()) -> None:
        self.db = database
        self.where = where
        # PostgreSQL: the schemas looked in for a table, in order (SQLite: none).
        self.schemas = schemas
        self._found: dict[str, str | None] = {}
        self._connected = False

    @classmethod
    def open(cls, settings: Any, *, what: str, section: str = "database",
             fallback_public: bool = False) -> UpstreamDatabase:
        """The database of a validated `{sqlite: ...}` or `{postgres: ...}` mapping, read-only.

        `what` names it in errors ("upstream's user DB"), `section` the key of upstream's
        configuration it comes from. `fallback_public`: look in `public` too when a table is
        not in `namespace` (upstream's A2A store ignores `namespace`).
        """
        pg = settings.get("postgres") if settings else None
        sqlite = settings.get("sqlite") if settings else None
        if not pg and not sqlite:
            raise MigrationError(f"{what}: the section names no database (sqlite or postgres)")
        try:
            found = StorageSettings.from_section(settings, where=section, default_path=None)
        except ConfigError as exc:  # an unreadable password_path
            raise MigrationError(f"{what}: {exc.message}") from exc
        if found.kind == "sqlite":
            assert found.path is not None
            if not found.path.is_file():
                raise MigrationError(f"{what}: SQLite file {found.path} does not exist")
            return cls(Database(dataclasses.replace(found, read_only=True)),
                       f"{what} (SQLite {found.path})")
        # A migration reads whole tables once: no statement timeout (a large table's scan must
        # not be cancelled), no prepared statements (each runs once; and a pooler may not keep
        # them), and its own name in pg_stat_activity.
        found = dataclasses.replace(found, read_only=True, max_connections=2,
                                    statement_timeout=0, prepared_statements=False,
                                    application_name="lcore-migrate")
        namespace = found.namespace
        schemas = (namespace, "public") if fallback_public and namespace != "public" \
            else (namespace,)
        where = (f"{what} (PostgreSQL {found.host}:{found.port}/{found.db} "
                 f"schema {namespace})")
        return cls(Database(found), where, schemas)

    async def _connect(self) -> None:
        if self._connected:
            return
        try:
            await self.db.ready()
        except StorageError as exc:
            await self.db.close()
            raise MigrationError(f"{self.where}: cannot connect: {_reason(exc)}") from exc
        self._connected = True

    async def close(self) -> None:
        await self.db.close()

    async def _locate(self, table: str) -> str | None:
        """The quoted, qualified name of `table`, or None when the database has no such table."""
        if table not in self._found:
            await self._connect()
            found = None
            try:
                if not self.schemas and await self.db.fetch(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = %s",
                        (table,)):
                    found = _quote(table)
                for schema in self.schemas:
                    if await self.db.fetch(
                            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
                            "AND table_name = %s", (schema, table)):
                        found = f"{_quote(schema)}.{_quote(table)}"
                        break
            except StorageError as exc:
                raise MigrationError(f"{self.where}: {_reason(exc)}") from exc
            self._found[table] = found
        return self._found[table]

    async def has(self, table: str) -> bool:
        return await self._locate(table) is not None

    async def require(self, table: str, hint: str = "") -> None:
        """Fail with a clear message when `table` is missing."""
        if not await self.has(table):
            where = f" in schema(s) {', '.join(self.schemas)}" if self.schemas else ""
            raise MigrationError(f"{self.where}: no table {table}{where}"
                                 + (f" ({hint})" if hint else ""))

    async def count(self, table: str) -> int:
        """Rows of `table` (0 when it does not exist)."""
        name = await self._locate(table)
        if name is None:
            return 0
        try:
            found = await self.db.fetch(f"SELECT COUNT(*) AS n FROM {name}")
        except StorageError as exc:
            raise MigrationError(f"{self.where}: {_reason(exc)}") from exc
        return int(found[0]["n"])

    async def rows(self, table: str, order_by: tuple[str, ...] = ()
                   ) -> AsyncIterator[dict[str, Any]]:
        """Every row of `table` as a dict by column name, in `order_by` order, read `BATCH` at
        a time (upstream's tables may not fit in memory)."""
        name = await self._locate(table)
        if name is None:
            return
        sql = f"SELECT * FROM {name}"
        if order_by:
            sql += " ORDER BY " + ", ".join(_quote(c) for c in order_by)
        batches = self.db.stream(sql, size=BATCH)
        try:
            while True:
                try:
                    batch = await anext(batches)
                except StopAsyncIteration:
                    return
                except StorageError as exc:
                    raise MigrationError(f"{self.where}: reading {table}: {_reason(exc)}"
                                         ) from exc
                for row in batch:
                    yield row
        finally:
            await batches.aclose()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _reason(exc: StorageError) -> str:
    return exc.cause.strip() or exc.response


def utc(value: Any) -> dt.datetime | None:
    """A stored moment as naive UTC (LCore's stores keep UTC without a zone); None if absent.

    Accepts a datetime (naive is taken as UTC), an ISO-like text (SQLAlchemy writes
    `YYYY-MM-DD HH:MM:SS[.ffffff]` in SQLite) or seconds since the epoch (upstream's SQLite
    cache). Raises ValueError for anything else.
    """
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, int | float):
        moment = dt.datetime.fromtimestamp(float(value), dt.UTC)
    elif isinstance(value, str):
        text = value.strip()
        try:
            return utc(float(text))
        except ValueError:
            pass
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    else:
        raise ValueError(f"not a moment: {value!r}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def json_list(value: Any) -> list[Any]:
    """A JSON list stored as text (SQLite) or already decoded (PostgreSQL jsonb); [] if NULL.

    Raises ValueError when the value is not a JSON list.
    """
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes):
        value = json.loads(value)
    if not isinstance(value, list):
        raise ValueError(f"not a list: {type(value).__name__}")
    return value


def json_value(value: Any) -> Any:
    """A JSON value stored as text or already decoded; None stays None."""
    if isinstance(value, str | bytes):
        return json.loads(value)
    return value


# Upstream keeps a conversation's id without Llama Stack's `conv_` prefix; LCore keeps the id
# Llama Stack knows (and answers with), the form a client's id is looked up under.
llama_conversation_id = conversation_key
