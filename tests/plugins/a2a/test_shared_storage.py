"""A2A state on the runtime's storage: the Database of its place, shared with the other stores
configured there, within that place's `max_connections`, and left open when the store closes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from lcore_a2a.store import ContextRecord, TaskRecord, open_store

from lcore_core import Storage
from lcore_core.config.schema import PostgresSchema

PG = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
      "ssl_mode": "disable", "gss_encmode": "disable"}
DIRECT = "host=127.0.0.1 port=5432 dbname=test user=postgres"


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    name = f"lcore_a2a_shared_{uuid.uuid4().hex[:8]}"
    yield name
    async with await psycopg.AsyncConnection.connect(DIRECT, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


async def sessions(name: str) -> int:
    async with await psycopg.AsyncConnection.connect(DIRECT, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,))
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def test_a2a_state_shares_its_place_and_stays_within_max_connections(
        namespace: str) -> None:
    name = f"lcore-a2a-{namespace[-8:]}"
    section = {"postgres": PostgresSchema().load(
        {**PG, "namespace": namespace, "max_connections": 2, "application_name": name})}
    storage = Storage()
    store = open_store(section, storage)
    try:
        database = storage.database(section, where="database")  # e.g. the user DB, same place
        assert store.db is database  # type: ignore[attr-defined]
        await store.setup()  # type: ignore[attr-defined]
        peak = 0

        async def one(index: int) -> None:
            user, context = f"user{index % 5}", f"ctx{index}"
            await store.save_context(ContextRecord(context, user, f"conv{index}"))
            await store.save_task(TaskRecord(f"task{index}", context, user,
                                             {"id": f"task{index}", "kind": "task"}))
            found = await store.get_task(user, f"task{index}")
            assert found is not None and found.context_id == context

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, await sessions(name))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(one(i) for i in range(60)))
        watcher.cancel()
        assert 1 <= peak <= 2
        await store.close()  # not its Database to close: the other stores keep using it
        assert await database.fetch("SELECT 1 AS one") == [{"one": 1}]
        assert await sessions(name) >= 1
    finally:
        await storage.close()
    assert await sessions(name) == 0
