"""`lcore migrate --from-upstream`: upstream's stored data, in SQLite and in PostgreSQL, moved
into LCore's stores by the real command, and found there through the stores' own APIs.

Upstream's tables are created from DDL written here after upstream's models (the user DB's
SQLAlchemy models, the caches' and quota's CREATE statements, a2a-sdk's task table).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from lcore_a2a.store import open_store
from lcore_cache_postgres import PostgresCache
from lcore_cache_sqlite import SqliteCache
from ruamel.yaml import YAML

from lcore_core.cli import main
from lcore_core.errors import StorageError
from lcore_core.migrate import MigrationError, UpstreamDatabase
from lcore_core.saved_prompts import SavedPrompts
from lcore_core.userdb import UserDB

PG: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
                      "ssl_mode": "disable", "gss_encmode": "disable"}
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
ALICE_CONV = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6"
BOB_CONV = "0f0e0d0c0b0a0f0e0d0c0b0a0f0e0d0c0b0a0f0e0d0c0b0a"
CAROL_CONV = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00"
DOCS = [{"doc_url": "https://docs.example/install", "doc_title": "Installing"}]
CALLS = [{"id": "call-1", "name": "search", "args": {"q": "install"}, "type": "tool_call"}]
RESULTS = [{"id": "call-1", "status": "success", "content": "found", "type": "tool_result",
            "round": 1}]
ALICE_PROMPT = "5f0c6a55-8a0e-4d43-9d55-3b7e0b1f2a01"
BOB_PROMPT = "5f0c6a55-8a0e-4d43-9d55-3b7e0b1f2a02"
CAROL_PROMPT = "5f0c6a55-8a0e-4d43-9d55-3b7e0b1f2a03"


# --- upstream's tables (DDL after upstream's models; `?` placeholders) -------------------------

def user_db_ddl(pg: bool) -> list[str]:
    stamp = "TIMESTAMP WITH TIME ZONE"
    return [
        f"""CREATE TABLE user_conversation (
              id VARCHAR NOT NULL PRIMARY KEY, user_id VARCHAR NOT NULL,
              last_used_model VARCHAR NOT NULL, last_used_provider VARCHAR NOT NULL,
              created_at {stamp} DEFAULT CURRENT_TIMESTAMP,
              last_message_at {stamp} DEFAULT CURRENT_TIMESTAMP,
              last_response_id VARCHAR, message_count INTEGER NOT NULL,
              topic_summary VARCHAR NOT NULL)""",
        "CREATE INDEX ix_user_conversation_user_id ON user_conversation (user_id)",
        f"""CREATE TABLE user_turn (
              conversation_id VARCHAR NOT NULL
                  REFERENCES user_conversation (id) ON DELETE CASCADE,
              turn_number INTEGER NOT NULL, started_at {stamp} NOT NULL,
              completed_at {stamp} NOT NULL, provider VARCHAR NOT NULL, model VARCHAR NOT NULL,
              response_id VARCHAR, PRIMARY KEY (conversation_id, turn_number))""",
        f"""CREATE TABLE saved_prompt (
              id VARCHAR NOT NULL PRIMARY KEY, user_id VARCHAR NOT NULL,
              name VARCHAR(255) NOT NULL, content TEXT NOT NULL,
              created_at {stamp} DEFAULT CURRENT_TIMESTAMP,
              updated_at {stamp} DEFAULT CURRENT_TIMESTAMP,
              CONSTRAINT uq_saved_prompt_user_name UNIQUE (user_id, name))""",
        "CREATE INDEX ix_saved_prompt_user_id ON saved_prompt (user_id)",
    ]


def cache_ddl(pg: bool) -> list[str]:
    stamp, data = ("timestamp", "jsonb") if pg else ("int", "text")
    return [
        f"""CREATE TABLE cache (
              user_id text NOT NULL, conversation_id text NOT NULL, created_at {stamp} NOT NULL,
              started_at text, completed_at text, query text, response text, provider text,
              model text, referenced_documents {data}, tool_calls {data}, tool_results {data},
              PRIMARY KEY (user_id, conversation_id, created_at))""",
        f"""CREATE TABLE conversations (
              user_id text NOT NULL, conversation_id text NOT NULL, topic_summary text,
              last_message_timestamp {stamp} NOT NULL, PRIMARY KEY (user_id, conversation_id))""",
        """CREATE TABLE conversation_summaries (
              user_id text NOT NULL, conversation_id text NOT NULL, created_at text NOT NULL,
              summarized_through_turn int NOT NULL, token_count int NOT NULL,
              model_used text NOT NULL, summary_text text NOT NULL,
              PRIMARY KEY (user_id, conversation_id, created_at))""",
    ]


QUOTA_DDL = [
    """CREATE TABLE quota_limits (
         id text NOT NULL, subject char(1) NOT NULL, quota_limit int NOT NULL, available int,
         updated_at timestamp with time zone, revoked_at timestamp with time zone,
         PRIMARY KEY (id, subject))""",
    """CREATE TABLE token_usage (
         user_id text NOT NULL, provider text NOT NULL, model text NOT NULL, input_tokens int,
         output_tokens int, updated_at timestamp with time zone,
         PRIMARY KEY (user_id, provider, model))""",
]
A2A_DDL = [
    "CREATE TABLE a2a_contexts (context_id VARCHAR PRIMARY KEY, conversation_id VARCHAR NOT NULL)",
    """CREATE TABLE a2a_tasks (
         id VARCHAR(36) PRIMARY KEY, context_id VARCHAR(36) NOT NULL, kind VARCHAR(16) NOT NULL,
         status JSON, artifacts JSON, history JSON, metadata JSON)""",
]


class Upstream:
    """Writes upstream's tables into SQLite files or one PostgreSQL schema."""

    def __init__(self, kind: str, root: Path, schema: str) -> None:
        self.kind, self.root, self.schema = kind, root, schema

    @property
    def pg(self) -> bool:
        return self.kind == "postgres"

    def section(self, name: str) -> dict[str, Any]:
        if self.pg:
            return {"postgres": {**PG, "namespace": self.schema}}
        return {"sqlite": {"db_path": str(self.root / f"{name}.db")}}

    def run(self, name: str, statements: Sequence[str],
            rows: Sequence[tuple[str, tuple[Any, ...]]] = ()) -> None:
        if self.pg:
            conn = pg_connect()
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'SET search_path TO "{self.schema}"')
                for sql in statements:
                    cursor.execute(sql)
                for sql, values in rows:
                    cursor.execute(sql.replace("?", "%s"), values)
            conn.close()
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.root / f"{name}.db") as conn:
            for sql in statements:
                conn.execute(sql)
            for sql, values in rows:
                conn.execute(sql, values)
        conn.close()

    def moment(self, value: dt.datetime) -> Any:
        """A timezone-aware column's value as each side stores it (SQLAlchemy writes text)."""
        return value if self.pg else value.strftime("%Y-%m-%d %H:%M:%S.%f")

    def fill(self) -> None:
        created = dt.datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=dt.UTC)
        later = created + dt.timedelta(hours=2)
        self.run("user", user_db_ddl(self.pg), [
            ("INSERT INTO user_conversation VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
             (ALICE_CONV, "alice", "m1", "p1", self.moment(created), self.moment(later),
              "resp_2", 2, "Installing the product")),
            ("INSERT INTO user_conversation VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
             (BOB_CONV, "bob", "m2", "p2", self.moment(created), self.moment(created), None, 1,
              "")),
            ("INSERT INTO user_conversation VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
             (CAROL_CONV, "carol", "m1", "p1", self.moment(created), self.moment(created),
              None, 5, "Upstream's topic")),
            *[("INSERT INTO user_turn VALUES (?, ?, ?, ?, ?, ?, ?)",
               (ALICE_CONV, n, self.moment(created), self.moment(later), "p1", "m1", f"resp_{n}"))
              for n in (1, 2)],
            *[("INSERT INTO saved_prompt VALUES (?, ?, ?, ?, ?, ?)",
               (prompt_id, user, name, content, self.moment(created), self.moment(later)))
              for prompt_id, user, name, content in (
                  (ALICE_PROMPT, "alice", "Deploy to staging", "Help me write a checklist"),
                  (BOB_PROMPT, "bob", "Deploy to staging", "Bob's own"),
                  (CAROL_PROMPT, "carol", "Mine", "Upstream's text"))],
        ])
        # PostgreSQL: `timestamp`, jsonb; SQLite: time()'s float seconds, JSON text.
        first, second = (created.replace(tzinfo=None), later.replace(tzinfo=None)) if self.pg \
            else (created.timestamp(), later.timestamp())
        docs, calls, results = json.dumps(DOCS), json.dumps(CALLS), json.dumps(RESULTS)
        entry = "INSERT INTO cache VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        self.run("cache", cache_ddl(self.pg), [
            (entry, ("alice", ALICE_CONV, first, "2025-03-04T05:06:07Z", "2025-03-04T05:06:09Z",
                     "How do I install it?", "Run the installer.", "p1", "m1", docs, calls,
                     results)),
            (entry, ("alice", ALICE_CONV, second, "2025-03-04T07:06:07Z",
                     "2025-03-04T07:06:08Z", "And then?", "Start it.", "p1", "m1", None, None,
                     None)),
            (entry, ("bob", BOB_CONV, first, "2025-03-04T05:06:07Z", "2025-03-04T05:06:08Z",
                     "Hi", "Hello", "p2", "m2", None, None, None)),
            ("INSERT INTO conversations VALUES (?, ?, ?, ?)",
             ("alice", ALICE_CONV, "Installing the product", second)),
            ("INSERT INTO conversation_summaries VALUES (?, ?, ?, ?, ?, ?, ?)",
             ("alice", ALICE_CONV, "2025-03-04T08:00:00Z", 1, 30, "m1", "They installed it.")),
        ])
        stamp = self.moment(NOW)
        self.run("quota", QUOTA_DDL, [
            ("INSERT INTO quota_limits VALUES (?, ?, ?, ?, ?, ?)",
             ("alice", "u", 1000, 400, stamp, stamp)),
            ("INSERT INTO quota_limits VALUES (?, ?, ?, ?, ?, ?)",
             ("", "c", 50000, 42000, stamp, stamp)),
            ("INSERT INTO token_usage VALUES (?, ?, ?, ?, ?, ?)",
             ("alice", "p1", "m1", 100, 50, stamp)),
        ])
        status = {"state": "completed", "timestamp": "2025-03-04T05:06:09Z",
                  "message": {"kind": "message", "messageId": "m-2", "role": "agent",
                              "parts": [{"kind": "text", "text": "Run the installer."}]}}
        history = [{"kind": "message", "messageId": "m-1", "role": "user",
                    "parts": [{"kind": "text", "text": "How do I install it?"}]}]
        artifacts = [{"artifactId": "a-1", "name": "answer",
                      "parts": [{"kind": "text", "text": "Run the installer."}]}]
        task = "INSERT INTO a2a_tasks VALUES (?, ?, ?, ?, ?, ?, ?)"
        self.run("a2a", A2A_DDL, [
            ("INSERT INTO a2a_contexts VALUES (?, ?)", ("ctx-alice", ALICE_CONV)),
            ("INSERT INTO a2a_contexts VALUES (?, ?)", ("ctx-nobody", "feedfeed")),
            (task, ("11111111-1111-1111-1111-111111111111", "ctx-alice", "task",
                    json.dumps(status), json.dumps(artifacts), json.dumps(history),
                    json.dumps({"model": "m1"}))),
            (task, ("22222222-2222-2222-2222-222222222222", "ctx-nobody", "task",
                    json.dumps(status), None, None, None)),
        ])

    def config(self, path: Path) -> Path:
        """Upstream's lightspeed-stack.yaml for this data."""
        cache = {"type": self.kind, **self.section("cache")}
        return write_yaml(path, {
            "database": self.section("user"), "conversation_cache": cache,
            "quota_handlers": {**self.section("quota"), "enable_token_history": True,
                               "limiters": [LIMITERS[0]]},
            "a2a_state": self.section("a2a")})


LIMITERS = [
    {"name": "daily", "type": "user_limiter", "initial_quota": 1000, "quota_increase": 0,
     "period": "1 day"},
    {"name": "cluster", "type": "cluster_limiter", "initial_quota": 50000,
     "quota_increase": 0, "period": "1 month"},
]


def write_yaml(path: Path, extra: dict[str, Any]) -> Path:
    document = {"name": "migration test", "service": {"host": "127.0.0.1", "port": 8080},
                "llama_stack": {"url": "http://127.0.0.1:9", "timeout": 5}, **extra}
    with path.open("w", encoding="utf-8") as fh:
        YAML().dump(document, fh)
    return path


def pg_connect() -> Any:
    return psycopg.connect(host=PG["host"], port=PG["port"], dbname=PG["db"], user=PG["user"],
                           connect_timeout=5)


@pytest.fixture
def schemas() -> Iterator[tuple[str, str]]:
    """Two fresh PostgreSQL schemas (upstream's, LCore's) of this test alone, dropped after."""
    names = tuple(f"lcore_migrate_{side}_{uuid.uuid4().hex[:10]}" for side in ("up", "lc"))
    try:
        conn = pg_connect()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL on {PG['host']}:{PG['port']} is required: {exc}")
    conn.autocommit = True
    with conn.cursor() as cursor:
        for name in names:
            cursor.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield names[0], names[1]
    finally:
        with conn.cursor() as cursor:
            for name in names:
                cursor.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.close()


class Target:
    """LCore's configuration and stores, in SQLite files or in one PostgreSQL schema."""

    def __init__(self, kind: str, root: Path, schema: str) -> None:
        self.kind, self.root, self.schema = kind, root, schema

    def section(self, name: str) -> dict[str, Any]:
        if self.kind == "postgres":
            return {"postgres": {**PG, "namespace": self.schema}}
        return {"sqlite": {"db_path": str(self.root / f"{name}.db")}}

    def config(self, path: Path) -> Path:
        return write_yaml(path, {
            "database": self.section("user"),
            "conversation_cache": {"type": self.kind, **self.section("cache")},
            "quota_handlers": {**self.section("quota"), "enable_token_history": True,
                               "limiters": LIMITERS},
            "a2a_state": self.section("a2a")})

    def cache(self) -> Any:
        if self.kind == "postgres":
            settings = {**PG, "namespace": self.schema, "password": "", "max_connections": 4}
            return PostgresCache(settings)
        return SqliteCache(self.root / "cache.db")

    def userdb(self) -> UserDB:
        settings = self.section("user")
        if self.kind == "postgres":
            settings["postgres"].update(password="", max_connections=4)
        return UserDB.open(settings)

    def a2a(self) -> Any:
        settings = self.section("a2a")
        if self.kind == "postgres":
            settings["postgres"].update(password="", max_connections=4)
        return open_store(settings)


@pytest.fixture(params=["sqlite", "postgres"])
def sides(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Upstream, Target]:
    if request.param == "postgres":
        up, lc = request.getfixturevalue("schemas")
    else:
        up = lc = ""
    upstream = Upstream(request.param, tmp_path / "upstream", up)
    upstream.fill()
    return upstream, Target(request.param, tmp_path / "lcore", lc)


def migrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["migrate", *args])
    out, err = capsys.readouterr()
    return status, out, err


def line(out: str, table: str) -> str:
    found = [ln for ln in out.splitlines() if ln.startswith(table)]
    assert found, f"no line for {table} in:\n{out}"
    return found[0]


# --- state of LCore's stores, read through their own APIs --------------------------------------

async def _state(target: Target) -> dict[str, Any]:
    userdb = target.userdb()
    cache = target.cache()
    a2a = target.a2a()
    try:
        conversations = {user: await userdb.list(user)
                         for user in ("alice", "bob", "carol", "dave")}
        store = SavedPrompts(userdb)
        prompts = {user: await store.list(user) for user in ("alice", "bob", "carol")}
        entries = {user: [e.to_dict() for e in await cache.get(user, conv)]
                   for user, conv in (("alice", f"conv_{ALICE_CONV}"), ("bob", f"conv_{BOB_CONV}"))}
        listed = {user: [vars(c) for c in await cache.list(user)] for user in ("alice", "bob")}
        context = await a2a.get_context("alice", "ctx-alice")
        task = await a2a.get_task("alice", "11111111-1111-1111-1111-111111111111")
        return {"conversations": conversations, "prompts": prompts, "entries": entries,
                "listed": listed,
                "context": context, "task": task,
                "missing_context": await a2a.get_context("alice", "ctx-nobody"),
                "missing_task": await a2a.get_task(None, "22222222-2222-2222-2222-222222222222")}
    finally:
        await userdb.close()
        await cache.close()
        await a2a.close()


def state(target: Target) -> dict[str, Any]:
    return asyncio.run(_state(target))


def quota_show(capsys: pytest.CaptureFixture[str], config: Path, *who: str) -> dict[str, Any]:
    assert main(["quota", "show", "-c", str(config), *who, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


async def _seed_carol(target: Target) -> None:
    """A conversation LCore already has (same id as upstream's): it must stay as it is."""
    userdb = target.userdb()
    await userdb.setup()
    await userdb.record_turn(f"conv_{CAROL_CONV}", "carol", model="lcore-model",
                             provider="lcore-provider", topic_summary="LCore's topic")
    store = SavedPrompts(userdb)  # and a saved prompt of the name upstream's has
    await store.setup()
    await store.create("carol", "Mine", "LCore's text", limit=5)
    await userdb.close()


# --- the tests ----------------------------------------------------------------------------------

def test_migrates_every_store_once(sides: tuple[Upstream, Target], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    upstream, target = sides
    source = upstream.config(tmp_path / "upstream.yaml")
    config = target.config(tmp_path / "lcore.yaml")
    asyncio.run(_seed_carol(target))

    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 0, err
    assert line(out, "database.user_conversation ->") == (
        "database.user_conversation -> lcore_user_conversation: 3 found, 2 imported, 1 skipped")
    assert "skipped 1: already in LCore's user DB (left as it is)" in out
    assert "last_response_id has no LCore counterpart" in out
    assert line(out, "database.user_turn") == "database.user_turn: 2 found, 0 imported, 2 skipped"
    assert line(out, "database.saved_prompt") == (
        "database.saved_prompt -> lcore_saved_prompt: 3 found, 2 imported, 1 skipped")
    assert ("skipped 1: already in LCore's saved prompts (the same id, or the user has a prompt "
            "of that name; left as it is)") in out
    assert "conversation_cache.cache -> " in out
    assert ": 3 found, 3 imported, 0 skipped" in line(out, "conversation_cache.cache ")
    assert ": 1 found, 1 imported, 0 skipped" in line(out, "conversation_cache.conversations")
    assert line(out, "conversation_cache.conversation_summaries") == (
        "conversation_cache.conversation_summaries: 1 found, 0 imported, 1 skipped")
    assert "skipped 1: LCore keeps no compaction summaries" in out
    assert ": 2 found, 2 imported, 0 skipped" in line(out, "quota_handlers.quota_limits")
    assert ": 1 found, 1 imported, 0 skipped" in line(out, "quota_handlers.token_usage")
    assert ": 2 found, 1 imported, 1 skipped" in line(out, "a2a_state.a2a_contexts")
    assert ": 2 found, 1 imported, 1 skipped" in line(out, "a2a_state.a2a_tasks")
    assert out.rstrip().endswith("total: 13 imported, 7 skipped")

    got = state(target)
    alice = got["conversations"]["alice"]
    assert [c["conversation_id"] for c in alice] == [f"conv_{ALICE_CONV}"]
    assert alice[0] | {"created_at": None, "last_message_at": None} == {
        "conversation_id": f"conv_{ALICE_CONV}", "user_id": "alice",
        "topic_summary": "Installing the product", "last_used_model": "m1",
        "last_used_provider": "p1", "message_count": 2, "created_at": None,
        "last_message_at": None}
    # Times keep their moment (UTC), microseconds included.
    assert dt.datetime.fromisoformat(alice[0]["created_at"]) == dt.datetime(
        2025, 3, 4, 5, 6, 7, 123456, tzinfo=dt.UTC)
    assert dt.datetime.fromisoformat(alice[0]["last_message_at"]) == dt.datetime(
        2025, 3, 4, 7, 6, 7, 123456, tzinfo=dt.UTC)
    assert [c["conversation_id"] for c in got["conversations"]["bob"]] == [f"conv_{BOB_CONV}"]
    [alice_prompt] = got["prompts"]["alice"]
    assert alice_prompt == {"id": ALICE_PROMPT, "name": "Deploy to staging",
                            "content": "Help me write a checklist",
                            "created_at": "2025-03-04T05:06:07.123456+00:00",
                            "updated_at": "2025-03-04T07:06:07.123456+00:00"}
    assert [(p["id"], p["content"]) for p in got["prompts"]["bob"]] == [(BOB_PROMPT, "Bob's own")]
    assert [p["content"] for p in got["prompts"]["carol"]] == ["LCore's text"]  # untouched
    carol = got["conversations"]["carol"]
    assert (carol[0]["topic_summary"], carol[0]["last_used_model"], carol[0]["message_count"]) \
        == ("LCore's topic", "lcore-model", 1)  # LCore's row, untouched

    first, second = got["entries"]["alice"]
    assert (first["query"], first["response"], first["provider"], first["model"]) == (
        "How do I install it?", "Run the installer.", "p1", "m1")
    assert (first["started_at"], first["completed_at"]) == ("2025-03-04T05:06:07Z",
                                                            "2025-03-04T05:06:09Z")
    assert (first["referenced_documents"], first["tool_calls"], first["tool_results"]) == (
        DOCS, CALLS, RESULTS)
    assert (second["query"], second["referenced_documents"], second["tool_calls"]) == (
        "And then?", [], [])
    assert [e["query"] for e in got["entries"]["bob"]] == ["Hi"]
    assert got["listed"]["alice"] == [{"conversation_id": f"conv_{ALICE_CONV}",
                                       "topic_summary": "Installing the product",
                                       "last_message_timestamp": "2025-03-04T07:06:08Z",
                                       "message_count": 2}]

    assert got["context"] is not None
    assert (got["context"].user_id, got["context"].conversation_id) == (
        "alice", f"conv_{ALICE_CONV}")
    task = got["task"]
    assert task is not None and task.user_id == "alice" and task.context_id == "ctx-alice"
    assert task.task["status"]["state"] == "completed"
    assert task.task["history"][0]["parts"][0]["text"] == "How do I install it?"
    assert task.task["artifacts"][0]["artifactId"] == "a-1"
    assert task.task["metadata"] == {"model": "m1"}
    assert got["missing_context"] is None and got["missing_task"] is None

    alice_quota = quota_show(capsys, config, "--user", "alice")
    assert [(q["name"], q["available"], q["quota_limit"]) for q in alice_quota["limiters"]] \
        == [("daily", 400, 1000)]
    assert [(u["provider"], u["model"], u["input_tokens"], u["output_tokens"])
            for u in alice_quota["token_usage"]] == [("p1", "m1", 100, 50)]
    cluster = quota_show(capsys, config, "--cluster")
    assert [(q["name"], q["available"]) for q in cluster["limiters"]] == [("cluster", 42000)]

    # A second run imports nothing and changes nothing.
    status, again, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 0, err
    assert again.rstrip().endswith("total: 0 imported, 20 skipped")
    assert state(target) == got
    assert quota_show(capsys, config, "--user", "alice") == alice_quota


def test_token_history_grows_by_what_upstream_counted_since(
        sides: tuple[Upstream, Target], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    upstream, target = sides
    source = upstream.config(tmp_path / "upstream.yaml")
    config = target.config(tmp_path / "lcore.yaml")
    assert migrate(capsys, "--from-upstream", str(source), "-c", str(config))[0] == 0
    upstream.run("quota", [], [("UPDATE token_usage SET input_tokens = ?, output_tokens = ?",
                                (160, 70))])
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 0, err
    assert ": 1 found, 1 imported, 0 skipped" in line(out, "quota_handlers.token_usage")
    usage = quota_show(capsys, config, "--user", "alice")["token_usage"]
    assert [(u["input_tokens"], u["output_tokens"], u["calls"]) for u in usage] == [(160, 70, 2)]


def test_dry_run_counts_and_writes_nothing(sides: tuple[Upstream, Target], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    upstream, target = sides
    source = upstream.config(tmp_path / "upstream.yaml")
    config = target.config(tmp_path / "lcore.yaml")
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config),
                               "--dry-run")
    assert status == 0, err
    assert "(dry run: nothing is written)" in out
    assert line(out, "database.user_conversation ->").endswith(
        "3 found, 3 to import, 0 skipped")
    assert out.rstrip().endswith("total: 15 to import, 5 skipped")
    if target.kind == "sqlite":
        # Not even an empty file (the stores may create their directory).
        assert [p for p in target.root.rglob("*") if not p.is_dir()] == []
    else:
        conn = pg_connect()
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s",
                           (target.schema,))
            assert cursor.fetchone()[0] == 0
        conn.close()
    # The real run then imports what the dry run counted.
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 0, err
    assert out.rstrip().endswith("total: 15 imported, 5 skipped")


def test_lcore_without_a_store_for_it_says_so(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    upstream = Upstream("sqlite", tmp_path / "upstream", "")
    upstream.fill()
    source = upstream.config(tmp_path / "upstream.yaml")
    config = write_yaml(tmp_path / "lcore.yaml", {
        "database": {"sqlite": {"db_path": str(tmp_path / "lcore" / "user.db")}},
        "conversation_cache": {"type": "memory", "memory": {"max_entries": 10}}})
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 0, err
    assert line(out, "conversation_cache.cache") == (
        "conversation_cache.cache: 3 found, 0 imported, 3 skipped")
    assert "LCore's conversation_cache is 'memory': nothing to keep it in" in out
    assert "quota_handlers.quota_limits: 2 found, 0 imported, 2 skipped" in out
    assert "LCore's quota_handlers has no limiters" in out
    assert "a2a_state.a2a_tasks: 2 found, 0 imported, 2 skipped" in out
    assert "LCore's a2a_state keeps A2A state in memory" in out


# --- errors: a message and a non-zero status, never a traceback -------------------------------

def test_unreachable_upstream_database(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    source = write_yaml(tmp_path / "upstream.yaml", {
        "database": {"postgres": {**PG, "port": 1}}})
    config = write_yaml(tmp_path / "lcore.yaml", {
        "database": {"sqlite": {"db_path": str(tmp_path / "lcore" / "user.db")}}})
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 1
    assert re.search(r"lcore migrate: failed: upstream's user DB \(PostgreSQL 127.0.0.1:1/test "
                     r"schema public\): cannot connect: OperationalError: .*", err), err
    assert "Traceback" not in err + out


def test_missing_upstream_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sqlite3.connect(tmp_path / "empty.db").close()
    source = write_yaml(tmp_path / "upstream.yaml", {
        "database": {"sqlite": {"db_path": str(tmp_path / "empty.db")}}})
    config = write_yaml(tmp_path / "lcore.yaml", {
        "database": {"sqlite": {"db_path": str(tmp_path / "lcore" / "user.db")}}})
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 1
    assert (f"lcore migrate: failed: upstream's user DB (SQLite {tmp_path / 'empty.db'}): no "
            f"table user_conversation (is this upstream's database section?)") in err
    assert "Traceback" not in err + out


def test_missing_upstream_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_yaml(tmp_path / "upstream.yaml", {
        "database": {"sqlite": {"db_path": str(tmp_path / "nowhere.db")}}})
    config = write_yaml(tmp_path / "lcore.yaml", {})
    status, _, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 1
    assert f"upstream's user DB: SQLite file {tmp_path / 'nowhere.db'} does not exist" in err
    assert not (tmp_path / "nowhere.db").exists()


def test_wrong_upstream_configuration(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    source = write_yaml(tmp_path / "upstream.yaml", {"database": {"sqlite": {"db_pth": "x"}}})
    config = write_yaml(tmp_path / "lcore.yaml", {})
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 2
    assert re.search(rf"{re.escape(str(source))}:\d+: database\.sqlite\.db_pth: ", err), err
    assert "Traceback" not in err + out


def test_one_sqlite_file_for_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """LCore's tables have names of their own: with no `database` section both sides default to
    the same file, and one lightspeed-stack.yaml may serve as both configurations."""
    upstream = Upstream("sqlite", tmp_path / "shared", "")
    upstream.fill()
    # More rows than one read takes: the reads must not hold the file while LCore writes.
    upstream.run("user", [], [
        ("INSERT INTO user_conversation VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
         (f"{n:048x}", "dave", "m1", "p1", "2025-03-04 05:06:07.000000",
          "2025-03-04 05:06:07.000000", None, 1, "")) for n in range(1, 1201)])
    target = Target("sqlite", tmp_path / "shared", "")
    source = upstream.config(tmp_path / "upstream.yaml")
    config = target.config(tmp_path / "lcore.yaml")
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 0, err
    assert out.rstrip().endswith("total: 1215 imported, 5 skipped")
    assert len(state(target)["conversations"]["dave"]) == 1200
    assert [e["query"] for e in state(target)["entries"]["alice"]] == [
        "How do I install it?", "And then?"]
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert out.rstrip().endswith("total: 0 imported, 1220 skipped")


def test_unreachable_lcore_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    upstream = Upstream("sqlite", tmp_path / "upstream", "")
    upstream.fill()
    source = upstream.config(tmp_path / "upstream.yaml")
    config = write_yaml(tmp_path / "lcore.yaml", {"database": {"postgres": {**PG, "port": 1}}})
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 1
    assert "lcore migrate: failed: Database error: OperationalError: " in err, err
    assert "Traceback" not in err + out


# --- the reader: upstream's databases, opened read-only through LCore's storage service -------

async def _write_through(reader: UpstreamDatabase, table: str) -> list[str]:
    """Try to change `table` through the reader; the errors, one per attempt."""
    errors = []
    try:
        assert await reader.count(table) == 3
        for sql in (f"DELETE FROM {table}", f"DROP TABLE {table}",
                    "CREATE TABLE lcore_migrate_was_here (k INTEGER)"):
            try:
                await reader.db.execute(sql)
            except StorageError as exc:
                errors.append(exc.cause)
        if reader.db.kind == "postgres":
            try:
                async with reader.db.transaction() as tx:
                    await tx.execute(f"DELETE FROM {table}")
            except StorageError as exc:
                errors.append(exc.cause)
    finally:
        await reader.close()
    return errors


def test_the_upstream_postgres_session_is_read_only(
        schemas: tuple[str, str], tmp_path: Path) -> None:
    up, _ = schemas
    upstream = Upstream("postgres", tmp_path, up)
    upstream.fill()
    reader = UpstreamDatabase.open(upstream.section("user"), what="upstream's user DB")
    errors = asyncio.run(_write_through(reader, "user_conversation"))
    assert len(errors) == 4 and all("read-only transaction" in e for e in errors), errors
    conn = pg_connect()
    with conn.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{up}".user_conversation')
        assert cursor.fetchone()[0] == 3  # type: ignore[index]
    conn.close()


def test_the_upstream_sqlite_file_is_read_only(tmp_path: Path) -> None:
    upstream = Upstream("sqlite", tmp_path / "upstream", "")
    upstream.fill()
    reader = UpstreamDatabase.open(upstream.section("user"), what="upstream's user DB")
    errors = asyncio.run(_write_through(reader, "user_conversation"))
    assert len(errors) == 3 and all("readonly database" in e for e in errors), errors
    with sqlite3.connect(tmp_path / "upstream" / "user.db") as conn:
        assert conn.execute("SELECT count(*) FROM user_conversation").fetchone()[0] == 3
    conn.close()


def test_an_upstream_password_file_under_home(schemas: tuple[str, str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """upstream's `password_path: ~/...` is read (from the home directory) and the command
    runs with it; a password file that cannot be read names the upstream database."""
    (tmp_path / "pg-password").write_text("s3cret\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    up, lc = schemas
    upstream = Upstream("postgres", tmp_path / "upstream", up)
    upstream.fill()
    section = upstream.section("user")
    section["postgres"]["password_path"] = "~/pg-password"
    reader = UpstreamDatabase.open(section, what="upstream's user DB")
    assert reader.db.settings.password == "s3cret"
    assert reader.db.settings.read_only
    source = write_yaml(tmp_path / "upstream.yaml", {"database": section})
    config = Target("postgres", tmp_path / "lcore", lc).config(tmp_path / "lcore.yaml")
    status, out, err = migrate(capsys, "--from-upstream", str(source), "-c", str(config))
    assert status == 0, err
    assert line(out, "database.user_conversation ->").endswith("3 found, 3 imported, 0 skipped")

    section["postgres"]["password_path"] = str(tmp_path)  # a directory: not readable as a file
    with pytest.raises(MigrationError) as caught:
        UpstreamDatabase.open(section, what="upstream's user DB")
    assert str(caught.value).startswith(
        f"upstream's user DB: database.postgres.password_path: cannot read {tmp_path}: ")


def test_the_upstream_postgres_session_has_no_statement_timeout(
        schemas: tuple[str, str], tmp_path: Path) -> None:
    """A migration reads whole tables once: LCore's own 30 s statement timeout and prepared
    statements are not for it, and its sessions carry their own name."""
    up, _ = schemas
    upstream = Upstream("postgres", tmp_path, up)
    upstream.fill()
    reader = UpstreamDatabase.open(upstream.section("user"), what="upstream's user DB")

    async def settings() -> list[dict[str, Any]]:
        try:
            return await reader.db.fetch(
                "SELECT current_setting('statement_timeout') AS timeout, application_name "
                "FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        finally:
            await reader.close()

    assert asyncio.run(settings()) == [{"timeout": "0", "application_name": "lcore-migrate"}]
    assert reader.db.settings.prepared_statements is False
