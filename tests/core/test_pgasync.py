"""`lcore_core.AsyncPostgres` on the machine's real PostgreSQL: connections are reused without a
statement of their own, one the server ended is not handed out, one left busy or inside a
transaction is not reused, the pool's bound holds, and an unreachable server fails the call at
once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg2
import psycopg2.extras
import pytest

from lcore_core import AsyncPostgres

PARAMS = {"host": "127.0.0.1", "port": 5432, "dbname": "test", "user": "postgres",
          "application_name": "lcore-pgasync-test"}


@pytest.fixture
async def pool() -> AsyncIterator[AsyncPostgres]:
    db = AsyncPostgres(PARAMS, max_size=2, timeout=5)
    yield db
    await db.close()


async def backend_pid(db: AsyncPostgres) -> int:
    [row] = await db.fetch("SELECT pg_backend_pid() AS pid")
    return int(row["pid"])


def _terminate(pid: int) -> None:
    killer = psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres")
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
        pool: AsyncPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
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


async def test_a_connection_the_server_ended_is_not_handed_out(pool: AsyncPostgres) -> None:
    first = await backend_pid(pool)
    await asyncio.to_thread(_terminate, first)
    second = await backend_pid(pool)  # no error: the dead connection was dropped at checkout
    assert second != first


async def test_a_statement_cut_short_leaves_no_busy_connection_in_the_pool(
        pool: AsyncPostgres) -> None:
    await backend_pid(pool)
    slow = asyncio.ensure_future(pool.fetch("SELECT pg_sleep(5), pg_backend_pid() AS pid"))
    await asyncio.sleep(0.3)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    # Both later calls answer at once: neither is given the connection still busy with the
    # cut statement (it would fail, or wait out the 5 s).
    pids = await asyncio.wait_for(asyncio.gather(backend_pid(pool), backend_pid(pool)), 3)
    assert len(set(pids)) == 2


def _backend_open(pid: int) -> bool:
    conn = psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres")
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            return bool(cursor.fetchone()[0])
    finally:
        conn.close()


async def test_a_connection_returned_inside_a_transaction_is_closed_at_once(
        pool: AsyncPostgres) -> None:
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
    db = AsyncPostgres(PARAMS, max_size=2, timeout=0.5)
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
    db = AsyncPostgres({**PARAMS, "port": 1, "connect_timeout": 5}, max_size=2, timeout=30)
    # Within the connect attempt, far from the 30 s a caller could wait for a free connection.
    with pytest.raises(psycopg.OperationalError, match="port 1 failed"):
        await asyncio.wait_for(db.execute("SELECT 1"), 10)
    # ... and each call tries again: the pool holds no broken state.
    with pytest.raises(psycopg.OperationalError, match="port 1 failed"):
        await asyncio.wait_for(db.execute("SELECT 1"), 10)


async def test_a_json_value_peewee_wraps_for_psycopg2_is_sent_as_jsonb(
        pool: AsyncPostgres) -> None:
    value = psycopg2.extras.Json({"a": ["b", 1]})
    [row] = await pool.fetch("SELECT %s::jsonb -> 'a' ->> 0 AS first, "
                             "pg_typeof(%s::jsonb)::text AS type", [value, value])
    assert row == {"first": "b", "type": "jsonb"}
