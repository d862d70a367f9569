"""The storage service's PostgreSQL pool (`lcore_core.storage.postgres.ConnectionPool`) on the
machine's real PostgreSQL: connections are reused without a
statement of their own, one the server ended is not handed out, one left inside a transaction
is closed at once, a statement outlives its cancelled caller, the pool's bound holds, and an
unreachable server fails the call at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from lcore_core import Settings
from lcore_core.storage.postgres import POOL_WAIT_S, ConnectionPool

PARAMS = {"host": "127.0.0.1", "port": 5432, "dbname": "test", "user": "postgres",
          "application_name": "lcore-pool-test"}


def make_pool(params: dict[str, Any], *, max_size: int, timeout: float = POOL_WAIT_S,
                  prepare: bool = True) -> ConnectionPool:
    """A pool from libpq keywords."""
    return ConnectionPool(psycopg.conninfo.make_conninfo(**params), max_size=max_size,
                          timeout=timeout, prepare=prepare)


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    db = make_pool(PARAMS, max_size=2, timeout=5)
    yield db
    await db.close()


async def backend_pid(db: ConnectionPool) -> int:
    [row] = await db.fetch("SELECT pg_backend_pid() AS pid")
    return int(row["pid"])


def _terminate(pid: int) -> None:
    killer = psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres")
    killer.autocommit = True
    try:
        with killer.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
            for _ in range(100):  # gone once the server no longer lists it
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cursor.fetchone()[0] == 0:
                    return
        pytest.fail(f"backend {pid} did not end")
    finally:
        killer.close()


async def test_a_connection_is_reused_without_a_statement_of_its_own(
        pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    execute = psycopg.AsyncConnection.execute

    async def counted(conn: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query).split()[0].upper())
        return await execute(conn, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", counted)
    first = await backend_pid(pool)
    for _ in range(3):
        assert await backend_pid(pool) == first
    assert sent == ["SELECT"] * 4


async def test_a_connection_the_server_ended_is_not_handed_out(pool: ConnectionPool) -> None:
    first = await backend_pid(pool)
    await asyncio.to_thread(_terminate, first)
    second = await backend_pid(pool)  # no error: the dead connection was dropped at checkout
    assert second != first


async def _waiting_for_a_lock() -> None:
    conn = psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres")
    conn.autocommit = True
    try:
        for _ in range(200):
            with conn.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                               "'Lock' AND application_name = %s", (PARAMS["application_name"],))
                if cursor.fetchone()[0]:
                    return
            await asyncio.sleep(0.02)
        pytest.fail("the statement never waited for the lock")
    finally:
        conn.close()


async def test_a_statement_runs_to_its_end_when_its_caller_is_cancelled(
        pool: ConnectionPool) -> None:
    """As a worker thread's statement does: a client that went away after its answer must not
    undo the bookkeeping of that answer."""
    table = f"pool_{uuid.uuid4().hex}"
    await pool.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)")
    await pool.execute(f"INSERT INTO {table} VALUES (1, 0)")
    holder = psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres")
    try:
        with holder.cursor() as cursor:  # keeps the row locked until it commits
            cursor.execute(f"SELECT n FROM {table} WHERE id = 1 FOR UPDATE")
        caller = asyncio.ensure_future(
            pool.execute(f"UPDATE {table} SET n = n + 1 WHERE id = 1"))
        await _waiting_for_a_lock()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        holder.commit()
        await pool.close()  # waits for the statements under way
        check = make_pool(PARAMS, max_size=1)
        assert await check.fetch(f"SELECT n FROM {table}") == [{"n": 1}]
        await check.execute(f"DROP TABLE {table}")
        await check.close()
    finally:
        holder.close()


async def test_close_closes_what_comes_back_later_and_a_new_call_reconnects(
        pool: ConnectionPool) -> None:
    async with pool.connection() as conn:
        before = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone() or [0])[0]
        await pool.close()
    assert conn.closed
    assert await backend_pid(pool) != before


def _backend_open(pid: int) -> bool:
    conn = psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres")
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            return bool(cursor.fetchone()[0])
    finally:
        conn.close()


async def test_a_connection_returned_inside_a_transaction_is_closed_at_once(
        pool: ConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute("BEGIN")
        cursor = await conn.execute("SELECT pg_backend_pid()")
        [(left,)] = await cursor.fetchall()
    # Closed on its return, which ends the transaction (and frees its locks) on the server,
    # not kept until a next checkout finds it unusable.
    for _ in range(100):
        if not await asyncio.to_thread(_backend_open, left):
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"backend {left} still open")
    assert await backend_pid(pool) != left


async def test_at_most_max_size_connections_and_a_bounded_wait() -> None:
    db = make_pool(PARAMS, max_size=2, timeout=0.5)
    try:
        held = [db.connection(), db.connection()]
        for context in held:
            await context.__aenter__()
        with pytest.raises(psycopg.OperationalError, match="no connection free"):
            await db.fetch("SELECT 1")
        await held[0].__aexit__(None, None, None)
        assert await db.fetch("SELECT 1 AS one") == [{"one": 1}]  # a freed one serves
        await held[1].__aexit__(None, None, None)
    finally:
        await db.close()


async def test_an_unreachable_server_fails_the_call_at_once() -> None:
    db = make_pool({**PARAMS, "port": 1, "connect_timeout": 5}, max_size=2, timeout=30)
    # Within the connect attempt, far from the 30 s a caller could wait for a free connection.
    with pytest.raises(psycopg.OperationalError, match="port 1 failed"):
        await asyncio.wait_for(db.execute("SELECT 1"), 10)
    # ... and each call tries again: the pool holds no broken state.
    with pytest.raises(psycopg.OperationalError, match="port 1 failed"):
        await asyncio.wait_for(db.execute("SELECT 1"), 10)


@pytest.mark.parametrize("prepare", [True, False])
async def test_a_statement_run_often_is_prepared_unless_told_not_to(prepare: bool) -> None:
    db = make_pool(PARAMS, max_size=1, prepare=prepare)
    try:
        for _ in range(8):
            assert await db.fetch("SELECT %s::int + 1 AS two", [1]) == [{"two": 2}]
        # The one connection's own prepared statements (the view is per session).
        [row] = await db.fetch("SELECT count(*) AS n FROM pg_prepared_statements")
        assert bool(row["n"]) is prepare
    finally:
        await db.close()


async def test_the_setting_reaches_the_pools_from_the_configuration() -> None:
    from lcore_core.config.schema import PostgresSchema
    from lcore_core.userdb import UserDB

    settings = Settings.wrap({"postgres": PostgresSchema().load(
        {"db": "test", "user": "postgres", "host": "127.0.0.1", "prepared_statements": False})})
    db = UserDB.open(settings)
    assert db.db.pool.prepare_threshold is None
    await db.close()
    default = UserDB.open(Settings.wrap({"postgres": PostgresSchema().load(
        {"db": "test", "user": "postgres", "host": "127.0.0.1"})}))
    assert default.db.pool.prepare_threshold is not None
    await default.close()
