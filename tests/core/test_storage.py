"""`lcore_core.storage` on SQLite (temp dir) and the machine's real PostgreSQL (schemas of the
tests' own): settings from any section, the shared connection budget, migrations, errors, and
opening databases that earlier LCore (peewee) wrote (their DDL written out here)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from lcore_core.config import Settings, load_config
from lcore_core.config.schema import PostgresSchema
from lcore_core.errors import ConfigError, StorageError
from lcore_core.plugins import load_plugins
from lcore_core.saved_prompts import SavedPrompts
from lcore_core.storage import Database, Storage, StorageSettings
from lcore_core.testing.storage_contract import DatabaseContract, UserDBContract
from lcore_core.userdb import UserDB

PG = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
      "ssl_mode": "disable", "gss_encmode": "disable"}
DIRECT = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def pg_section(**extra: Any) -> Settings:
    return Settings.wrap({"postgres": PostgresSchema().load({**PG, **extra})})


async def drop_schema(namespace: str) -> None:
    async with await psycopg.AsyncConnection.connect(DIRECT, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        db = Database(StorageSettings.from_section(
            Settings.wrap({"sqlite": {"db_path": str(tmp_path / "s.db")}})))
        yield db
        await db.close()
        return
    namespace = f"lcore_storage_{uuid.uuid4().hex[:8]}"
    db = Database(StorageSettings.from_section(pg_section(namespace=namespace)))
    yield db
    await db.close()
    await drop_schema(namespace)


# --- settings --------------------------------------------------------------------------------

def test_a_password_file_under_home_is_read(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pg-password").write_text("s3cret\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = StorageSettings.from_section(pg_section(password_path="~/pg-password"))
    assert settings.password == "s3cret"
    assert "s3cret" not in repr(settings)


def test_an_unreadable_password_file_names_the_section(tmp_path: Path) -> None:
    section = Settings.wrap({"postgres": {**PG, "password_path": str(tmp_path)}})  # a directory
    with pytest.raises(ConfigError, match=r"quota_handlers\.postgres\.password_path"):
        StorageSettings.from_section(section, where="quota_handlers")


def test_sqlite_paths_expand_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = StorageSettings.from_section(Settings.wrap({"sqlite": {"db_path": "~/x/u.db"}}))
    assert settings.path == tmp_path / "x" / "u.db"
    assert StorageSettings.from_section(None).path == Path("/tmp/lightspeed-stack.db")


def test_tls_timeout_and_name_reach_the_connection_keywords() -> None:
    settings = StorageSettings.from_section(pg_section(
        ssl_mode="verify-full", ca_cert_path=__file__, connect_timeout=3,
        application_name="lcore-x", namespace="ns"))
    params = settings.conninfo()
    assert (params["sslmode"], params["sslrootcert"], params["connect_timeout"],
            params["application_name"]) == ("verify-full", __file__, 3, "lcore-x")
    assert params["options"] == "-c search_path=ns,public"


async def test_the_user_db_starts_with_a_password_file_under_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_app: Any, serving: Any) -> None:
    """`password_path: ~/...` passes validation; the app must then start on it (it crashed)."""
    (tmp_path / "pg-password").write_text("unused-with-trust-auth\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    namespace = f"lcore_home_{uuid.uuid4().hex[:8]}"
    app = make_app({"database": {"sqlite": None, "postgres": {
        **PG, "namespace": namespace, "password_path": "~/pg-password"}},
        "authentication": {"module": "noop"}})
    try:
        async with serving(app) as client:
            response = await client.get("/v1/saved-prompts", query_string={"user_id": "u"})
            assert response.status_code == 200, await response.get_data(as_text=True)
    finally:
        await drop_schema(namespace)


def test_the_configuration_checks_the_new_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    head = "name: x\nllama_stack:\n  url: http://127.0.0.1:9\ndatabase:\n  postgres:\n" \
        "    db: test\n    user: postgres\n"
    path.write_text(head + "    connect_timeout: 0\n")
    with pytest.raises(ConfigError, match="connect_timeout"):
        load_config(path, load_plugins(entrypoints=False))
    path.write_text(head + "    connect_timeout: 4\n    application_name: lcore-a\n")
    settings = StorageSettings.from_section(
        load_config(path, load_plugins(entrypoints=False)).database)
    assert (settings.connect_timeout, settings.application_name) == (4, "lcore-a")


# --- one connection budget -------------------------------------------------------------------

async def test_max_connections_bounds_every_connection_of_a_section() -> None:
    """The user DB and saved prompts on one `database` section, under concurrent load, never
    hold more sessions than `max_connections` (counted by the server, by application_name)."""
    name = f"lcore-budget-{uuid.uuid4().hex[:8]}"
    namespace = f"lcore_budget_{uuid.uuid4().hex[:8]}"
    section = pg_section(namespace=namespace, max_connections=3, application_name=name)
    storage = Storage()
    userdb = UserDB.open(section, storage)
    prompts = SavedPrompts(UserDB.open(section, storage))
    assert prompts.db is userdb.db  # one Database per place
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(DIRECT, autocommit=True) as conn:
            while not done.is_set():
                cursor = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                            "application_name = %s", (name,))
                seen.append((await cursor.fetchone())[0])
                await asyncio.sleep(0.005)

    async def load(i: int) -> None:
        await userdb.record_turn(f"conv_{i % 7}", "u", model="m", provider="p")
        await userdb.get(f"conv_{i % 7}")
        await userdb.list("u")
        await prompts.create(f"user{i}", "n", "c", limit=5)
        await prompts.list(f"user{i}")

    try:
        await userdb.setup()
        await prompts.setup()
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(load(i) for i in range(60)))
        done.set()
        await watcher
        assert max(seen) >= 1
        assert max(seen) <= 3, seen
        assert sum(c["message_count"] for c in await userdb.list("u")) == 60
    finally:
        await storage.close()
        await drop_schema(namespace)


# --- the contracts, on both engines -------------------------------------------------------

class TestDatabase(DatabaseContract):
    @pytest.fixture
    async def database(self, database: Database) -> AsyncIterator[Database]:
        yield database


class TestUserDB(UserDBContract):
    @pytest.fixture
    async def userdb(self, database: Database) -> AsyncIterator[UserDB]:
        userdb = UserDB(database)
        await userdb.setup()
        yield userdb

    @pytest.fixture
    async def unreachable_userdb(self, database: Database, tmp_path: Path
                                 ) -> AsyncIterator[UserDB]:
        yield UserDB(Database(unreachable(database.kind, tmp_path)))


def unreachable(kind: str, tmp_path: Path) -> StorageSettings:
    """A place of this engine that cannot be reached: a closed port, a path under a file."""
    if kind == "postgres":
        return StorageSettings.from_section(pg_section(port=1))
    (tmp_path / "a-file").write_text("")
    return StorageSettings.from_section(
        Settings.wrap({"sqlite": {"db_path": str(tmp_path / "a-file" / "u.db")}}))


async def test_sqlite_writers_in_one_process_do_not_starve_each_other(tmp_path: Path) -> None:
    """More concurrent write transactions than worker threads: none times out on the lock."""
    db = Database(StorageSettings.from_section(
        Settings.wrap({"sqlite": {"db_path": str(tmp_path / "w.db")}})))
    await db.migrate("w", [(1, ['CREATE TABLE IF NOT EXISTS "t_w" (k INTEGER PRIMARY KEY)'])])

    async def write(i: int) -> None:
        async with db.transaction(lock="w") as tx:
            await tx.fetch('SELECT COUNT(*) AS n FROM "t_w"')
            await tx.execute('INSERT INTO "t_w" (k) VALUES (%s)', (i,))

    await asyncio.gather(*(write(i) for i in range(40)),
                         *(db.execute('INSERT INTO "t_w" (k) VALUES (%s)', (100 + i,))
                           for i in range(40)))
    assert (await db.fetch('SELECT COUNT(*) AS n FROM "t_w"'))[0]["n"] == 80
    await db.close()


# --- read-only databases and streamed reads (`lcore migrate` reading upstream) -----------------

async def test_a_read_only_database_reads_and_refuses_every_write(database: Database) -> None:
    await database.migrate("ro", [(1, ['CREATE TABLE IF NOT EXISTS "t_ro" (k INTEGER)'])])
    await database.execute('INSERT INTO "t_ro" (k) VALUES (%s)', (1,))
    reader = Database(dataclasses.replace(database.settings, read_only=True))
    try:
        assert await reader.fetch('SELECT k FROM "t_ro"') == [{"k": 1}]
        with pytest.raises(StorageError) as caught:
            await reader.execute('INSERT INTO "t_ro" (k) VALUES (%s)', (2,))
        assert re.search(r"read-only transaction|readonly database", caught.value.cause)
        with pytest.raises(StorageError):
            await reader.execute('DROP TABLE "t_ro"')
        if reader.kind == "postgres":  # an explicit transaction is read-only too
            with pytest.raises(StorageError, match="read-only transaction"):
                async with reader.transaction() as tx:
                    await tx.execute('DELETE FROM "t_ro"')
    finally:
        await reader.close()
    assert await database.fetch('SELECT k FROM "t_ro"') == [{"k": 1}]


async def test_text_with_nul_is_stored_and_found(database: Database) -> None:
    """Found by the deep fuzz: a NUL in a saved text (a topic summary, an A2A context id) was
    PostgreSQL's DataError; now it is kept as U+FFFD there, and a lookup finds the row."""
    await database.migrate("nul", [(1, ['CREATE TABLE IF NOT EXISTS "t_nul" (k TEXT)'])])
    await database.execute('INSERT INTO "t_nul" (k) VALUES (%s)', ("a\x00b",))
    found = await database.fetch('SELECT k FROM "t_nul" WHERE k = %s', ("a\x00b",))
    assert found == [{"k": "a\x00b" if database.kind == "sqlite" else "a\ufffdb"}]


async def test_a_missing_sqlite_file_opened_read_only_is_not_created(tmp_path: Path) -> None:
    settings = StorageSettings.from_section(
        Settings.wrap({"sqlite": {"db_path": str(tmp_path / "new" / "x.db")}}))
    reader = Database(dataclasses.replace(settings, read_only=True))
    with pytest.raises(StorageError, match="unable to open database file"):
        await reader.ready()
    await reader.close()
    assert not (tmp_path / "new").exists()


async def test_stream_reads_a_query_in_batches_and_frees_its_connection(
        database: Database) -> None:
    await database.migrate("st", [(1, ['CREATE TABLE IF NOT EXISTS "t_st" (k INTEGER)'])])
    for k in range(7):
        await database.execute('INSERT INTO "t_st" (k) VALUES (%s)', (k,))
    batches = [b async for b in database.stream('SELECT k FROM "t_st" ORDER BY k', size=3)]
    assert [[row["k"] for row in batch] for batch in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b async for b in database.stream('SELECT k FROM "t_st" WHERE k > 9')] == []
    # A reader that stops early gives its connection back at once: with one connection in the
    # pool, the next statement gets it.
    single = Database(dataclasses.replace(database.settings, max_connections=1))
    try:
        async for _ in single.stream('SELECT k FROM "t_st"', size=2):
            break
        if single.kind == "postgres":
            single.pool.timeout = 2
        assert (await single.fetch('SELECT COUNT(*) AS n FROM "t_st"'))[0]["n"] == 7
    finally:
        await single.close()
    with pytest.raises(StorageError):
        async for _ in database.stream('SELECT k FROM "no_such_table"'):
            pass


# --- databases earlier LCore wrote (peewee) ---------------------------------------------------

# The DDL peewee emitted for LCore 0.1's models (SQLite `DATETIME`, PostgreSQL `TIMESTAMP`).
OLD_USERDB_DDL = [
    'CREATE TABLE "lcore_user_conversation" ("id" VARCHAR(128) NOT NULL PRIMARY KEY, '
    '"user_id" VARCHAR(256) NOT NULL, "topic_summary" TEXT, '
    '"last_used_model" VARCHAR(256) NOT NULL, "last_used_provider" VARCHAR(256) NOT NULL, '
    '"created_at" {ts} NOT NULL, "last_message_at" {ts} NOT NULL, '
    '"message_count" INTEGER NOT NULL, "response_ids" TEXT)',
    'CREATE INDEX "_oldconversation_user_id" ON "lcore_user_conversation" ("user_id")',
    'CREATE INDEX "_oldconversation_last_message_at" ON "lcore_user_conversation" '
    '("last_message_at")',
    'CREATE TABLE "lcore_saved_prompt" ("id" VARCHAR(64) NOT NULL PRIMARY KEY, '
    '"user_id" VARCHAR(256) NOT NULL, "name" VARCHAR(255) NOT NULL, "content" TEXT NOT NULL, '
    '"created_at" {ts} NOT NULL, "updated_at" {ts} NOT NULL)',
    'CREATE INDEX "_oldprompt_user_id" ON "lcore_saved_prompt" ("user_id")',
    'CREATE UNIQUE INDEX "_oldprompt_user_id_name" ON "lcore_saved_prompt" ("user_id", "name")',
    'CREATE TABLE "lcore_schema_version" ("component" VARCHAR(64) NOT NULL PRIMARY KEY, '
    '"version" INTEGER NOT NULL)',
]
OLD_CACHE_DDL = [
    'CREATE TABLE "lcore_cache_entry" ("id" {id} NOT NULL PRIMARY KEY, '
    '"user_id" TEXT NOT NULL, "conversation_id" TEXT NOT NULL, "created_at" {ts} NOT NULL, '
    '"started_at" TEXT NOT NULL, "completed_at" TEXT NOT NULL, "query" TEXT NOT NULL, '
    '"response" TEXT NOT NULL, "provider" TEXT NOT NULL, "model" TEXT NOT NULL, '
    '"referenced_documents" {json} NOT NULL, "tool_calls" {json} NOT NULL, '
    '"tool_results" {json} NOT NULL, "attachments" {json} NOT NULL)',
    'CREATE INDEX "entry_user_id_conversation_id_id" ON "lcore_cache_entry" '
    '("user_id", "conversation_id", "id")',
    'CREATE TABLE "lcore_cache_conversation" ("user_id" TEXT NOT NULL, '
    '"conversation_id" TEXT NOT NULL, "topic_summary" TEXT, '
    '"last_message_timestamp" TEXT NOT NULL, "last_entry_id" {bigint} NOT NULL, '
    '"message_count" INTEGER NOT NULL, PRIMARY KEY ("user_id", "conversation_id"))',
    'CREATE INDEX "conversation_user_id_last_entry_id" ON "lcore_cache_conversation" '
    '("user_id", "last_entry_id")',
    'CREATE TABLE "lcore_schema_version" ("component" VARCHAR(64) NOT NULL PRIMARY KEY, '
    '"version" INTEGER NOT NULL)',
]
OLD_CACHE_PG_INDEXES = [f'CREATE INDEX "entry_{c}" ON "lcore_cache_entry" USING GIN ("{c}")'
                        for c in ("referenced_documents", "tool_calls", "tool_results",
                                  "attachments")]


def _old_time(value: dt.datetime, postgres: bool) -> Any:
    """A time as peewee stored it: a naive datetime, or on SQLite its text (`str`)."""
    return value if postgres else str(value)


async def _write_as_before(kind: str, path: Path, namespace: str,
                           statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Run `statements` (`%s` markers) on the old database (PostgreSQL: in a new schema
    `namespace`) with a connection of its own, not through the storage service."""
    if kind == "postgres":
        async with await psycopg.AsyncConnection.connect(DIRECT, autocommit=True) as conn:
            await conn.execute(f'CREATE SCHEMA "{namespace}"')
            await conn.execute(f'SET search_path TO "{namespace}"')
            for sql, params in statements:
                await conn.execute(sql, params)
        return

    def write() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for sql, params in statements:
                conn.execute(sql.replace("%s", "?"), params)
        finally:
            conn.close()

    await asyncio.to_thread(write)


def _userdb_as_before(postgres: bool) -> list[tuple[str, tuple[Any, ...]]]:
    ts = "TIMESTAMP" if postgres else "DATETIME"
    at = _old_time(dt.datetime(2026, 5, 1, 12, 30, 15, 123456), postgres)
    day = _old_time(dt.datetime(2026, 5, 1), postgres)
    conversation = ('INSERT INTO "lcore_user_conversation" (id, user_id, topic_summary, '
                    "last_used_model, last_used_provider, created_at, last_message_at, "
                    "message_count, response_ids) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")
    return [
        *[(sql.format(ts=ts), ()) for sql in OLD_USERDB_DDL],
        ('INSERT INTO "lcore_schema_version" (component, version) VALUES (%s, %s), (%s, %s)',
         ("userdb", 2, "saved_prompts", 1)),
        (conversation, ("conv_1", "ann", "T", "m", "p", at, at, 3, "r1 r2")),
        (conversation, ("conv_2", "ann", None, "", "", day, day, 1, None)),
        ('INSERT INTO "lcore_saved_prompt" (id, user_id, name, content, created_at, '
         "updated_at) VALUES (%s, %s, %s, %s, %s, %s)", ("p1", "ann", "Mine", "text", at, at)),
    ]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_database_earlier_lcore_wrote_opens_and_keeps_working(
        kind: str, tmp_path: Path) -> None:
    namespace = f"lcore_old_{uuid.uuid4().hex[:8]}"
    if kind == "sqlite":
        section = Settings.wrap({"sqlite": {"db_path": str(tmp_path / "old.db")}})
    else:
        section = pg_section(namespace=namespace)
    await _write_as_before(kind, tmp_path / "old.db", namespace,
                           _userdb_as_before(kind == "postgres"))
    storage = Storage()
    userdb = UserDB.open(section, storage)
    prompts = SavedPrompts(userdb)
    try:
        await userdb.setup()
        await prompts.setup()
        row = await userdb.get("conv_1")
        assert row is not None
        assert (row["response_ids"], row["message_count"], row["created_at"]) == (
            ["r1", "r2"], 3, "2026-05-01T12:30:15.123456+00:00")
        await userdb.record_turn("conv_1", "ann", model="m2", provider="p", chained=True,
                                 response_id="r3")
        await userdb.record_turn("conv_3", "ann", model="m", provider="p")
        listed = [c["conversation_id"] for c in await userdb.list("ann")]
        assert listed == ["conv_3", "conv_1", "conv_2"]  # old and new times sort together
        assert (await userdb.get("conv_1"))["response_ids"] == ["r1", "r2", "r3"]
        assert [p["name"] for p in await prompts.list("ann")] == ["Mine"]
        with pytest.raises(Exception, match="Mine"):
            await prompts.create("ann", "Mine", "again", limit=5)  # the old unique index holds
        assert (await userdb.db.version("userdb"), await userdb.db.version("saved_prompts")) \
            == (2, 1)
    finally:
        await storage.close()
        if kind == "postgres":
            await drop_schema(namespace)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_cache_earlier_lcore_wrote_opens_and_keeps_working(
        kind: str, tmp_path: Path) -> None:
    from lcore_core.testing.cache_contract import cache_from_plugins, entry

    namespace = f"lcore_oldc_{uuid.uuid4().hex[:8]}"
    postgres = kind == "postgres"
    docs = [{"doc_title": "T", "doc_url": "https://x"}]
    ddl = [sql.format(id="BIGSERIAL" if postgres else "INTEGER",
                      ts="TIMESTAMP" if postgres else "DATETIME",
                      json="JSONB" if postgres else "TEXT",
                      bigint="BIGINT" if postgres else "INTEGER") for sql in OLD_CACHE_DDL]
    first = entry(1).to_dict()
    first["referenced_documents"] = docs
    # peewee's BinaryJSONField (PostgreSQL) or the JSON text LCore 0.1 wrote (SQLite).
    values = [(Jsonb(v) if postgres else json.dumps(v)) if isinstance(v, list) else v
              for v in first.values()]
    columns = ", ".join(["user_id", "conversation_id", "created_at", *first])
    await _write_as_before(kind, tmp_path / "c.db", namespace, [
        *[(sql, ()) for sql in ddl + (OLD_CACHE_PG_INDEXES if postgres else [])],
        ('INSERT INTO "lcore_schema_version" (component, version) VALUES (%s, %s)',
         (f"cache_{kind}", 1)),
        (f'INSERT INTO "lcore_cache_entry" ({columns}) VALUES '
         f'({", ".join(["%s"] * (len(first) + 3))})',
         ("u", "c1", _old_time(dt.datetime.now(dt.UTC).replace(tzinfo=None), postgres),
          *values)),
        ('INSERT INTO "lcore_cache_conversation" (user_id, conversation_id, topic_summary, '
         "last_message_timestamp, last_entry_id, message_count) VALUES (%s, %s, %s, %s, "
         '(SELECT MAX(id) FROM "lcore_cache_entry"), %s)',
         ("u", "c1", "old topic", first["completed_at"], 1))])
    settings = ({"db_path": str(tmp_path / "c.db")} if kind == "sqlite"
                else {**PG, "namespace": namespace})
    cache: Any = cache_from_plugins(kind, settings)
    try:
        await cache.setup()
        [turn] = await cache.get("u", "c1")
        assert (turn.query, turn.referenced_documents) == ("question 1", docs)
        await cache.insert("u", "c1", entry(2))
        await cache.insert("u", "c2", entry(3))
        assert [t.query for t in await cache.get("u", "c1")] == ["question 1", "question 2"]
        listed = await cache.list("u")
        assert [(c.conversation_id, c.message_count) for c in listed] == [("c2", 1), ("c1", 2)]
        assert listed[1].topic_summary == "old topic"
        assert await cache.db.version(f"cache_{kind}") == 1
    finally:
        await cache.close()
        if postgres:
            await drop_schema(namespace)



async def test_counting_cache_calls_leaves_the_backend_as_it_is() -> None:
    """The core counts cache calls behind a wrapper: no method is patched onto the backend."""
    from prometheus_client import CollectorRegistry

    from lcore_core.cache import ConversationCache, MemoryCache
    from lcore_core.metrics import CoreMetrics, count_cache_calls
    from lcore_core.testing.cache_contract import entry

    registry = CollectorRegistry()
    backend = MemoryCache()
    counted = count_cache_calls(backend, "memory", CoreMetrics(registry))
    assert "insert" not in vars(backend)
    assert isinstance(counted, ConversationCache) and counted.backend is backend
    await counted.insert("u", "c", entry(1))
    assert await counted.get("u", "c") == [entry(1)]
    assert counted.max_entries == backend.max_entries  # the backend's own attributes
    assert registry.get_sample_value("ls_cache_operations_total",
                                     {"backend": "memory", "operation": "insert"}) == 1
