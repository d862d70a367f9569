"""Upstream's databases, opened read-only, and the conversions of their values.

Upstream (Lightspeed Core Stack) keeps each kind of data where one section of its
lightspeed-stack.yaml says: a SQLite file or a PostgreSQL database (its tables in the schema
`namespace`). The migration only reads them: a SQLite file is opened with `mode=ro`, a
PostgreSQL session is read-only, so a mistaken configuration cannot change upstream's data.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee

CONNECT_TIMEOUT_S = 5
BATCH = 500


class MigrationError(Exception):
    """The migration cannot go on: an unreachable database, a missing table, a wrong setting."""


class UpstreamDatabase:
    """One upstream database; `where` names it in messages."""

    def __init__(self, database: peewee.Database, where: str,
                 schemas: tuple[str, ...] = ()) -> None:
        self.db = database
        self.where = where
        # PostgreSQL: the schemas looked in for a table, in order (SQLite: none).
        self.schemas = schemas
        self._found: dict[str, str | None] = {}

    @classmethod
    def open(cls, settings: Any, *, what: str, fallback_public: bool = False) -> UpstreamDatabase:
        """The database of a validated `{sqlite: ...}` or `{postgres: ...}` mapping.

        `what` names it in errors ("upstream's user DB"). `fallback_public`: look in `public`
        too when a table is not in `namespace` (upstream's A2A store ignores `namespace`).
        """
        pg = settings.get("postgres") if settings else None
        if pg:
            return cls._postgres(pg, what, fallback_public)
        sqlite = settings.get("sqlite") if settings else None
        if not sqlite:
            raise MigrationError(f"{what}: the section names no database (sqlite or postgres)")
        path = Path(sqlite["db_path"]).expanduser()
        if not path.is_file():
            raise MigrationError(f"{what}: SQLite file {path} does not exist")
        database = peewee.SqliteDatabase(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                         pragmas={"busy_timeout": 10_000})
        upstream = cls(database, f"{what} (SQLite {path})")
        upstream._connect()
        return upstream

    @classmethod
    def _postgres(cls, pg: Any, what: str, fallback_public: bool) -> UpstreamDatabase:
        password = pg.get("password") or ""
        if pg.get("password_path"):
            password = Path(pg["password_path"]).expanduser().read_text(
                encoding="utf-8").strip()
        params: dict[str, Any] = {
            "host": pg["host"], "port": pg["port"], "user": pg["user"], "password": password,
            "sslmode": pg["ssl_mode"], "gssencmode": pg["gss_encmode"],
            "connect_timeout": CONNECT_TIMEOUT_S, "application_name": "lcore-migrate",
            "options": "-c default_transaction_read_only=on"}
        if pg.get("ca_cert_path"):
            params["sslrootcert"] = pg["ca_cert_path"]
        namespace = pg.get("namespace") or "public"
        schemas = (namespace, "public") if fallback_public and namespace != "public" \
            else (namespace,)
        where = f"{what} (PostgreSQL {pg['host']}:{pg['port']}/{pg['db']} schema {namespace})"
        upstream = cls(peewee.PostgresqlDatabase(pg["db"], **params), where, schemas)
        upstream._connect()
        return upstream

    def _connect(self) -> None:
        try:
            self.db.connect(reuse_if_open=True)
            self.db.execute_sql("SELECT 1").fetchone()
        except peewee.PeeweeException as exc:
            self.db.close()
            raise MigrationError(f"{self.where}: cannot connect: {_reason(exc)}") from exc

    def close(self) -> None:
        self.db.close()

    def _locate(self, table: str) -> str | None:
        """The quoted, qualified name of `table`, or None when the database has no such table."""
        if table not in self._found:
            found = None
            try:
                for schema in self.schemas or (None,):
                    if self.db.table_exists(table, schema):
                        found = _quote(table) if schema is None \
                            else f"{_quote(schema)}.{_quote(table)}"
                        break
            except peewee.PeeweeException as exc:
                raise MigrationError(f"{self.where}: {_reason(exc)}") from exc
            self._found[table] = found
        return self._found[table]

    def has(self, table: str) -> bool:
        return self._locate(table) is not None

    def require(self, table: str, hint: str = "") -> None:
        """Fail with a clear message when `table` is missing."""
        if not self.has(table):
            where = f" in schema(s) {', '.join(self.schemas)}" if self.schemas else ""
            raise MigrationError(f"{self.where}: no table {table}{where}"
                                 + (f" ({hint})" if hint else ""))

    def count(self, table: str) -> int:
        """Rows of `table` (0 when it does not exist)."""
        name = self._locate(table)
        if name is None:
            return 0
        return int(self._execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0])

    def rows(self, table: str, order_by: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
        """Every row of `table` as a dict by column name, in `order_by` order."""
        name = self._locate(table)
        if name is None:
            return
        sql = f"SELECT * FROM {name}"
        if order_by:
            sql += " ORDER BY " + ", ".join(_quote(c) for c in order_by)
        cursor = self._execute(sql)
        columns = [d[0] for d in cursor.description]
        while True:
            try:
                batch = cursor.fetchmany(BATCH)
            except Exception as exc:  # the driver's own error type (sqlite3, psycopg2)
                raise MigrationError(f"{self.where}: reading {table}: {_reason(exc)}") from exc
            if not batch:
                return
            for row in batch:
                yield dict(zip(columns, row, strict=True))

    def _execute(self, sql: str) -> Any:
        try:
            return self.db.execute_sql(sql)
        except peewee.PeeweeException as exc:
            raise MigrationError(f"{self.where}: {_reason(exc)}") from exc


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()}"


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


def llama_conversation_id(upstream_id: str) -> str:
    """Upstream keeps a conversation's id without Llama Stack's `conv_` prefix; LCore keeps the
    id Llama Stack knows (and answers with), so the prefix is put back."""
    return upstream_id if upstream_id.startswith("conv_") else f"conv_{upstream_id}"
