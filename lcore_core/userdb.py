"""The user DB: conversation metadata per user (peewee; SQLite by default, PostgreSQL by config).

peewee is synchronous: every public coroutine runs its query in a worker thread, except on
PostgreSQL the two a query's path runs (`get`, `record_turn`), which run on the event loop
(`AsyncPostgres`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import peewee
import psycopg

from lcore_core.errors import StorageError
from lcore_core.pgasync import AsyncPostgres
from lcore_core.tracing import traced

SCHEMA_VERSION = 2  # 2: response_ids
DEFAULT_SQLITE_PATH = "/tmp/lightspeed-stack.db"

def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class UserConversation(peewee.Model):
    id = peewee.CharField(primary_key=True, max_length=128)
    user_id = peewee.CharField(index=True, max_length=256)
    topic_summary = peewee.TextField(null=True)
    last_used_model = peewee.CharField(default="", max_length=256)
    last_used_provider = peewee.CharField(default="", max_length=256)
    created_at = peewee.DateTimeField(default=utcnow)
    last_message_at = peewee.DateTimeField(default=utcnow, index=True)
    message_count = peewee.IntegerField(default=0)
    # The Llama Stack responses of a conversation LCore chains itself (`previous_response_id`),
    # oldest first, space-separated; NULL for one kept as a Llama Stack conversation.
    response_ids = peewee.TextField(null=True)

    class Meta:
        table_name = "lcore_user_conversation"


class SchemaVersion(peewee.Model):
    component = peewee.CharField(primary_key=True, max_length=64)
    version = peewee.IntegerField()

    class Meta:
        table_name = "lcore_schema_version"


def bind_models(database: peewee.Database, *models: type[peewee.Model]) -> list[Any]:
    """Copies of `models` bound to `database`.

    peewee's `bind_ctx` rebinds the classes process-wide, which races between threads and
    between two apps in one process; a copy per database has no shared state.
    """
    bound = []
    for model in models:
        meta = type("Meta", (), {"database": database, "table_name": model._meta.table_name})
        bound.append(type(model.__name__, (model,), {"Meta": meta, "__module__": __name__}))
    return bound


def install_schema(database: peewee.Database, tables: list[type[peewee.Model]],
                   version_model: type[peewee.Model], component: str, version: int, *,
                   namespace: str | None = None) -> None:
    """Create `tables` (and the schema `namespace` in PostgreSQL) and record `version`.

    Call it with a connection open and outside any transaction: it runs its own. Idempotent,
    and safe for replicas starting side by side. PostgreSQL's CREATE ... IF NOT EXISTS is not
    atomic (two creators collide on its catalog), so there one process at a time goes through,
    under a session advisory lock taken *before* the transaction begins: a transaction that
    began before another one's commit may still read the catalog as it was, and collide anyway.
    """
    postgres = isinstance(database, peewee.PostgresqlDatabase)
    key = (f"lcore-schema:{namespace or ''}",)
    if postgres:
        database.execute_sql("SELECT pg_advisory_lock(hashtext(%s))", key)
    try:
        with database.atomic():
            if postgres and namespace:
                quoted = '"' + namespace.replace('"', '""') + '"'
                database.execute_sql(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            database.create_tables([*tables, version_model], safe=True)
            _add_missing_columns(database, tables, namespace if postgres else None)
            fields = version_model._meta.fields
            version_model.insert(component=component, version=version).on_conflict(
                conflict_target=[fields["component"]], update={fields["version"]: version}
            ).execute()
    finally:
        if postgres:
            database.execute_sql("SELECT pg_advisory_unlock(hashtext(%s))", key)


def _add_missing_columns(database: peewee.Database, tables: list[type[peewee.Model]],
                         schema: str | None) -> None:
    """Add the columns a newer version brought to tables an older one created (each new field
    is nullable or has a default, so existing rows stay valid)."""
    from playhouse.migrate import SchemaMigrator, migrate

    migrator = SchemaMigrator.from_database(database)
    for table in tables:
        name = table._meta.table_name
        present = {c.name for c in database.get_columns(name, schema)}
        missing = [f for f in table._meta.sorted_fields if f.column_name not in present]
        if missing:
            migrate(*(migrator.add_column(name, f.column_name, f) for f in missing))


def open_database(settings: Any) -> peewee.Database:
    """A peewee database for a `database`-style section ({sqlite: ...} or {postgres: ...})."""
    pg = settings.get("postgres") if settings else None
    if pg:
        password = pg.get("password") or ""
        if pg.get("password_path"):
            password = Path(pg["password_path"]).read_text(encoding="utf-8").strip()
        options = f"-c search_path={pg['namespace']},public" if pg.get("namespace") else None
        kwargs: dict[str, Any] = {"host": pg["host"], "port": pg["port"], "user": pg["user"],
                                  "password": password, "sslmode": pg["ssl_mode"],
                                  "gssencmode": pg["gss_encmode"]}
        if options:
            kwargs["options"] = options
        if pg.get("ca_cert_path"):
            kwargs["sslrootcert"] = pg["ca_cert_path"]
        return peewee.PostgresqlDatabase(pg["db"], **kwargs)
    sqlite = (settings.get("sqlite") if settings else None) or {"db_path": DEFAULT_SQLITE_PATH}
    path = Path(sqlite["db_path"]).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return peewee.SqliteDatabase(str(path), pragmas={"journal_mode": "wal", "busy_timeout": 5000,
                                                     "foreign_keys": 1, "synchronous": 1})


class PreparedQuery:
    """A peewee query built once, with a marker for each named value; `params(values)` gives
    one call's parameters in the statement's order, to run with `database.execute_sql(sql,
    params)`. Building a query costs peewee 0.1-0.3 ms, more than a one-row statement takes
    the database, and it runs in a worker thread that holds the GIL.

    Every value that changes from call to call must be named: a field's default is computed at
    build time and would be kept as a constant (a datetime constant is refused for that
    reason). A value the field wraps (a JSON field's adapter) is wrapped the same way.
    """

    def __init__(self, build: Callable[..., peewee.Query], names: Iterable[str],
                 dates: Iterable[str] = ()) -> None:
        markers: dict[str, Any] = {name: f"\x00{name}\x00" for name in names}
        for second, name in enumerate(dates, 1):  # a date field's value must look like one
            markers[name] = dt.datetime(1901, 1, 1, 0, 0, second)
        self.sql, template = build(**markers).sql()
        by_marker = {marker: name for name, marker in markers.items()}
        self._slots: list[tuple[str | None, Any, Any]] = []
        for value in template:
            inner = getattr(value, "adapted", value)
            slot = by_marker.get(inner) if isinstance(inner, str | dt.datetime) else None
            if slot is None and isinstance(value, dt.datetime):
                raise ValueError(f"a date built into the query: name it ({value})")
            wrap = type(value) if slot is not None and inner is not value else None
            self._slots.append((slot, wrap, value))
        unused = set(markers) - {name for name, _, _ in self._slots}
        if unused:
            raise ValueError(f"the query does not use {sorted(unused)}")

    def params(self, values: dict[str, Any]) -> list[Any]:
        return [constant if name is None else wrap(values[name]) if wrap else values[name]
                for name, wrap, constant in self._slots]

    def run(self, database: peewee.Database, values: dict[str, Any]) -> Any:
        """Run the statement with `values` (synchronously: call it from a worker thread)."""
        return database.execute_sql(self.sql, self.params(values))


class UserDB:
    """Conversation ownership and metadata."""

    @classmethod
    def open(cls, settings: Any) -> UserDB:
        """The user DB of a `database` section ({sqlite: ...} or {postgres: ...})."""
        pg = settings.get("postgres") if settings else None
        if not pg:
            return cls(open_database(settings))
        return cls(open_database(settings), pool_size=pg["max_connections"],
                   prepare=pg.get("prepared_statements", True))

    def __init__(self, database: peewee.Database, *, pool_size: int = 10,
                 prepare: bool = True) -> None:
        """`pool_size`, `prepare`: on PostgreSQL, for the statements on a query's path, which
        run on the event loop (`AsyncPostgres`); each worker thread keeps one more connection."""
        self.db = database
        self.Conversation, self.Version = bind_models(database, UserConversation, SchemaVersion)
        self.pg = AsyncPostgres.of(database, max_size=pool_size, prepare=prepare) if isinstance(
            database, peewee.PostgresqlDatabase) else None
        C = self.Conversation
        self._fetch = PreparedQuery(lambda id: C.select().where(C.id == id), ["id"])
        # record_turn's statement, built once for each shape: peewee took longer to build it
        # than the database took to run it, in a worker thread holding the GIL.
        names = ["id", "user_id", "topic", "model", "provider", "ids"]
        self._upserts = {
            False: PreparedQuery(functools.partial(self._upsert, appended=None), names, ["now"]),
            True: PreparedQuery(self._upsert, [*names, "appended"], ["now"])}

    def _upsert(self, *, id: Any, user_id: Any, topic: Any, model: Any, provider: Any,
                now: Any, ids: Any, appended: Any) -> peewee.Query:
        """One statement (no transaction round trips), so concurrent turns cannot lose a
        count: create the conversation, or bump its count and last-used fields. `appended`
        (" " + the turn's response id) extends a chain; appending to NULL leaves it NULL."""
        C = self.Conversation
        update = {C.message_count: C.message_count + 1, C.last_message_at: now,
                  C.last_used_model: model, C.last_used_provider: provider}
        if appended is not None:
            update[C.response_ids] = C.response_ids.concat(appended)
        return C.insert(
            id=id, user_id=user_id, topic_summary=topic, last_used_model=model,
            last_used_provider=provider, created_at=now, last_message_at=now, message_count=1,
            response_ids=ids).on_conflict(conflict_target=[C.id], update=update)

    async def _run(self, fn: Any, *args: Any) -> Any:
        """Run `fn` in a worker thread. Each call here is one statement, which the database
        runs atomically by itself (peewee's connections are in autocommit): an explicit
        transaction would only add two round trips."""
        def call() -> Any:
            # Each worker thread keeps its connection open (peewee's are thread-local):
            # opening and closing one per call costs more than the query, and closing the last
            # SQLite connection checkpoints the WAL. A failed call drops the connection, so
            # the next one reconnects.
            try:
                reused = not self.db.connect(reuse_if_open=True)
                try:
                    return fn(*args)
                except (peewee.OperationalError, peewee.InterfaceError):
                    if not reused or not isinstance(self.db, peewee.PostgresqlDatabase):
                        raise
                # A kept connection found dead (PostgreSQL restarted since this thread last
                # used it) fails on its first statement, so the server never saw this call:
                # one retry on a new connection. (Only a statement that reached the server and
                # whose acknowledgement was lost could apply twice.)
                with contextlib.suppress(Exception):
                    self.db.close()
                self.db.connect()
                return fn(*args)
            except peewee.PeeweeException as exc:
                with contextlib.suppress(Exception):
                    self.db.close()
                raise StorageError("Database error", f"{type(exc).__name__}: {exc}") from exc

        return await asyncio.to_thread(call)

    async def setup(self) -> None:
        """Create tables idempotently and record the schema version."""

        def create() -> None:
            install_schema(self.db, [self.Conversation], self.Version, "userdb", SCHEMA_VERSION,
                           namespace=self._namespace())

        await self._run(create)

    def _namespace(self) -> str | None:
        """The PostgreSQL schema `namespace` names (None: SQLite, or the default schema)."""
        if isinstance(self.db, peewee.PostgresqlDatabase):
            options = self.db.connect_params.get("options", "")
            if "search_path=" in options:
                return str(options.split("search_path=")[1].split(",")[0])
        return None

    async def installed(self) -> bool:
        """Whether the tables exist (creating nothing, not even the SQLite file)."""
        if isinstance(self.db, peewee.SqliteDatabase) and not Path(self.db.database).exists():
            return False
        return bool(await self._run(lambda: self.db.table_exists(
            self.Conversation._meta.table_name,
            self._namespace() or ("public" if self.pg is not None else None))))

    async def close(self) -> None:
        if self.pg is not None:
            await self.pg.close()
        await asyncio.to_thread(self.db.close)

    async def _run_async(self, query: PreparedQuery, values: dict[str, Any], *,
                         rows: bool = False) -> Any:
        """`query` on the event loop (PostgreSQL only)."""
        assert self.pg is not None
        try:
            if rows:
                return await self.pg.fetch(query.sql, query.params(values))
            return await self.pg.execute(query.sql, query.params(values))
        except psycopg.Error as exc:
            raise StorageError("Database error", f"{type(exc).__name__}: {exc}") from exc

    async def ready(self) -> None:
        await self._run(lambda: self.db.execute_sql("SELECT 1"))

    @traced("lcore.storage.userdb.get")
    async def get(self, conversation_id: str) -> dict[str, Any] | None:
        """The conversation's metadata, with `response_ids`: the chained Llama Stack responses,
        oldest first, or None for a conversation kept as a Llama Stack conversation."""
        if self.pg is not None:
            found = await self._run_async(self._fetch, {"id": conversation_id}, rows=True)
            return _with_ids(self.Conversation(**found[0])) if found else None

        def fetch() -> dict[str, Any] | None:
            row = self.Conversation.get_or_none(self.Conversation.id == conversation_id)
            return None if row is None else _with_ids(row)

        return await self._run(fetch)

    @traced("lcore.storage.userdb.record_turn")
    async def record_turn(self, conversation_id: str, user_id: str, *, model: str,
                          provider: str, topic_summary: str | None = None, chained: bool = False,
                          response_id: str | None = None) -> None:
        """Create the conversation on its first turn, else bump count and last-used fields.

        `chained`: LCore keeps the conversation as a chain of responses; `response_id` (the
        turn's stored response) is appended to it. Whether a conversation is chained is fixed by
        its first turn: appending to a NULL list leaves it NULL.
        """
        values = {"id": conversation_id, "user_id": user_id, "topic": topic_summary,
                  "model": model, "provider": provider, "now": utcnow(),
                  "ids": (response_id or "") if chained else None,
                  "appended": " " + response_id if chained and response_id else None}
        upsert = self._upserts[values["appended"] is not None]
        if self.pg is not None:
            await self._run_async(upsert, values)
        else:
            await self._run(upsert.run, self.db, values)

    @traced("lcore.storage.userdb.find_response")
    async def find_response(self, response_id: str,
                            user_id: str | None) -> dict[str, Any] | None:
        """The chained conversation (of `user_id`, or anyone's with None) holding the stored
        response `response_id`, as `get` gives it; None when no conversation holds it.

        A text search over the chains (a response id is not indexed): LIKE narrows the rows,
        the exact match on the split list decides (`_` in an id is a LIKE wildcard).
        """
        def fetch() -> dict[str, Any] | None:
            C = self.Conversation
            query = C.select().where(C.response_ids.contains(response_id))
            if user_id is not None:
                query = query.where(C.user_id == user_id)
            for row in query:
                found = _with_ids(row)
                if response_id in found["response_ids"]:
                    return found
            return None

        return await self._run(fetch)

    @traced("lcore.storage.userdb.list")
    async def list(self, user_id: str | None) -> list[dict[str, Any]]:
        def fetch() -> list[dict[str, Any]]:
            C = self.Conversation
            fields = [f for f in C._meta.sorted_fields if f is not C.response_ids]
            query = C.select(*fields).order_by(C.last_message_at.desc())
            if user_id is not None:
                query = query.where(C.user_id == user_id)
            return [_row(r) for r in query]

        return await self._run(fetch)

    @traced("lcore.storage.userdb.delete")
    async def delete(self, conversation_id: str) -> bool:
        return bool(await self._run(
            lambda: self.Conversation.delete().where(self.Conversation.id == conversation_id)
            .execute()))

    @traced("lcore.storage.userdb.set_topic_summary")
    async def set_topic_summary(self, conversation_id: str, summary: str) -> bool:
        return bool(await self._run(
            lambda: self.Conversation.update(topic_summary=summary)
            .where(self.Conversation.id == conversation_id).execute()))


def _row(row: Any) -> dict[str, Any]:
    return {
        "conversation_id": row.id, "user_id": row.user_id, "topic_summary": row.topic_summary,
        "last_used_model": row.last_used_model, "last_used_provider": row.last_used_provider,
        "created_at": _iso(row.created_at), "last_message_at": _iso(row.last_message_at),
        "message_count": row.message_count,
    }


def _with_ids(row: Any) -> dict[str, Any]:
    ids = row.response_ids
    return {**_row(row), "response_ids": None if ids is None else ids.split()}


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC).isoformat()
    return str(value)
