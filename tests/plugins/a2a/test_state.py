"""The A2A context store: one contract for memory, SQLite and PostgreSQL, and multi-turn A2A
conversations that survive an LCore restart (sqlite) and span two replicas (postgres).

PostgreSQL is the machine's (127.0.0.1:5432, user postgres, database `test`); each test run uses
a schema of its own, dropped at the end. PostgreSQL missing is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from a2a.types import TaskQueryParams
from lcore_a2a.store import (
    ContextRecord,
    ContextStore,
    MemoryStore,
    TaskRecord,
    open_store,
)

from lcore_core import StorageError
from lcore_core.config.schema import PostgresSchema
from lcore_core.testing.storage_contract import A2AStateContract

from .conftest import ConfigWriter, answer, serving, user_message
from .test_a2a import scripted, send

PG = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
      "ssl_mode": "disable", "gss_encmode": "disable"}


def _connect() -> Any:
    return psycopg.connect(host=PG["host"], port=PG["port"], dbname=PG["db"], user=PG["user"],
                           connect_timeout=5)


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    """A schema for this test run; fails (never skips) when PostgreSQL cannot be reached."""
    name = f"lcore_a2a_test_{uuid.uuid4().hex[:10]}"
    try:
        _connect().close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL on {PG['host']}:{PG['port']} is required: {exc}")
    yield name
    conn = _connect()
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    conn.close()


def pg_settings(namespace: str, **overrides: Any) -> dict[str, Any]:
    return PostgresSchema().load({**PG, "namespace": namespace, **overrides})


def _task(task_id: str, context_id: str, state: str) -> dict[str, Any]:
    return {"id": task_id, "contextId": context_id, "kind": "task",
            "status": {"state": state}, "history": [{"kind": "message", "role": "user",
                                                     "messageId": "m", "parts": [
                                                         {"kind": "text", "text": "hé"}]}]}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path,
                namespace: str) -> AsyncIterator[ContextStore]:
    settings: dict[str, Any] | None = {
        "memory": None, "sqlite": {"sqlite": {"db_path": str(tmp_path / "a2a.db")}},
        "postgres": {"postgres": pg_settings(namespace)}}[request.param]
    opened = open_store(settings)
    await opened.setup()
    await opened.setup()  # idempotent
    yield opened
    await opened.close()


class TestA2AState(A2AStateContract):
    """The core's contract for A2A state stores, on memory, SQLite and PostgreSQL."""

    @pytest.fixture
    async def store(self, store: ContextStore) -> AsyncIterator[ContextStore]:
        yield store

    @pytest.fixture
    async def unreachable_store(self, store: ContextStore, tmp_path: Path,
                                namespace: str) -> AsyncIterator[ContextStore | None]:
        if isinstance(store, MemoryStore):
            yield None
            return
        (tmp_path / "a-file").write_text("")
        broken = open_store({"postgres": pg_settings(namespace, port=1)}
                            if store.db.kind == "postgres"  # type: ignore[attr-defined]
                            else {"sqlite": {"db_path": str(tmp_path / "a-file" / "a2a.db")}})
        yield broken
        await broken.close()


async def test_store_contract(store: ContextStore) -> None:
    context_id, task_id = uuid.uuid4().hex, str(uuid.uuid4())
    assert await store.get_context("alice", context_id) is None
    assert await store.get_task("alice", task_id) is None
    await store.save_context(ContextRecord(context_id, "alice", "conv_1"))
    assert await store.get_context("alice", context_id) == ContextRecord(context_id, "alice",
                                                                         "conv_1")
    await store.save_context(ContextRecord(context_id, "alice", "conv_2"))  # last one wins
    assert (await store.get_context("alice", context_id)).conversation_id == "conv_2"  # type: ignore[union-attr]
    # Context ids are per user: bob's own context of that id is another one, alice's stays.
    assert await store.get_context("bob", context_id) is None
    await store.save_context(ContextRecord(context_id, "bob", "conv_b"))
    assert (await store.get_context("bob", context_id)).conversation_id == "conv_b"  # type: ignore[union-attr]
    assert (await store.get_context("alice", context_id)).conversation_id == "conv_2"  # type: ignore[union-attr]

    await store.save_task(TaskRecord(task_id, context_id, "alice",
                                     _task(task_id, context_id, "working")))
    await store.save_task(TaskRecord(task_id, context_id, "alice",
                                     _task(task_id, context_id, "completed")))
    got = await store.get_task("alice", task_id)
    assert await store.get_task(None, task_id) == got  # any owner's (read_other_conversations)
    assert await store.get_task("bob", task_id) is None  # tasks are read through their owner
    assert got == TaskRecord(task_id, context_id, "alice", _task(task_id, context_id,
                                                                 "completed"))
    await store.ready()


async def test_concurrent_writers_do_not_fail(store: ContextStore) -> None:
    context_id = uuid.uuid4().hex
    await asyncio.gather(*(store.save_task(TaskRecord(f"{context_id}-{i}", context_id, "bob",
                                                      _task(f"{context_id}-{i}", context_id,
                                                            "completed")))
                           for i in range(10)))
    for i in range(10):
        assert await store.get_task("bob", f"{context_id}-{i}") is not None


def test_memory_store_forgets_the_oldest_tasks() -> None:
    async def run() -> None:
        memory = MemoryStore(max_tasks=2)
        for i in range(3):
            await memory.save_task(TaskRecord(str(i), "c", "u", _task(str(i), "c", "working")))
        assert await memory.get_task("u", "0") is None
        assert await memory.get_task("u", "2") is not None

    asyncio.run(run())


async def test_unreachable_postgres_is_a_storage_error(namespace: str) -> None:
    broken = open_store({"postgres": pg_settings(namespace, port=1)})
    with pytest.raises(StorageError, match="A2A state store"):
        await broken.get_context("u", "x")
    await broken.close()


async def test_a_password_file_under_home_is_read(namespace: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`password_path: ~/...` passes validation; the store must then open (it crashed)."""
    (tmp_path / "pg-password").write_text("unused-with-trust-auth\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    store = open_store({"postgres": pg_settings(namespace, password_path="~/pg-password")})
    try:
        await store.setup()
        await store.save_context(ContextRecord("ctx-home", "u", "conv_home"))
        assert (await store.get_context("u", "ctx-home")) == ContextRecord(
            "ctx-home", "u", "conv_home")
    finally:
        await store.close()


# --- through LCore --------------------------------------------------------------------------


@pytest.mark.e2e
async def test_sqlite_context_survives_a_restart(write_config: ConfigWriter, tmp_path: Path,
                                                 llm: Any) -> None:
    config = write_config(a2a_state={"sqlite": {"db_path": str(tmp_path / "a2a.db")}})
    first_q = f"remember sqlite-{uuid.uuid4().hex[:6]}"
    async with serving(config) as lcore:
        first = await send(await lcore.client(streaming=False), first_q)
        assert first.status.state.value == "completed"
    # A new process would start from the same file: a fresh app, the same configuration.
    async with serving(config) as lcore:
        client = await lcore.client(streaming=False)
        second = await send(client, "who am I?", first.context_id)
        assert answer(second) == scripted("who am I?", 2, first_q)
        old = await client.get_task(TaskQueryParams(id=first.id))
        assert old.status.state.value == "completed"
        assert answer(old) == scripted(first_q)
        ready = await lcore.http.get(f"{lcore.url}/readiness")
        assert ready.status_code == 200, ready.text


@pytest.mark.e2e
async def test_postgres_context_spans_replicas(write_config: ConfigWriter, namespace: str,
                                               llm: Any) -> None:
    config = write_config(a2a_state={"postgres": {**PG, "namespace": namespace}})
    first_q = f"remember postgres-{uuid.uuid4().hex[:6]}"
    async with serving(config) as one, serving(config) as two:
        first = await send(await one.client(streaming=False), first_q)
        other = await two.client(streaming=True)
        events: list[Any] = [e async for e in other.send_message(
            user_message("and me?", first.context_id))]
        done = events[-1][0]
        assert done.context_id == first.context_id
        assert answer(done) == scripted("and me?", 2, first_q)
        # Either replica answers tasks/get for a task the other ran.
        seen = await (await two.client(streaming=False)).get_task(TaskQueryParams(id=first.id))
        assert seen.status.state.value == "completed"
    conn = _connect()
    with conn.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{namespace}".lcore_a2a_user_context '
                       f"WHERE context_id = %s", (first.context_id,))
        assert cursor.fetchone()[0] == 1
    conn.close()



async def test_an_earlier_store_is_upgraded_to_contexts_per_user(tmp_path: Path) -> None:
    """Schema version 1 had one namespace of context ids: its rows move to the per-user table
    (each under the user it recorded) and the old table goes."""
    import sqlite3

    path = tmp_path / "a2a.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE lcore_a2a_context (context_id VARCHAR(256) PRIMARY KEY, "
                   "user_id TEXT NOT NULL, conversation_id TEXT NOT NULL, "
                   "updated_at DATETIME NOT NULL)")
        db.execute("INSERT INTO lcore_a2a_context VALUES "
                   "('ctx-1', 'alice', 'conv_a', '2025-01-01 00:00:00')")
    db.close()
    for _ in range(2):  # the second start finds nothing left to move
        store = open_store({"sqlite": {"db_path": str(path)}})
        await store.setup()
        assert await store.get_context("alice", "ctx-1") == ContextRecord("ctx-1", "alice",
                                                                          "conv_a")
        assert await store.get_context("bob", "ctx-1") is None
        await store.close()
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert "lcore_a2a_context" not in tables and "lcore_a2a_user_context" in tables
