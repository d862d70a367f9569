"""What the PostgreSQL settings do on a real session (the machine's server, not keyword dicts):
the statement timeout, TLS, TCP keepalives, and a place shared by sections that disagree."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from lcore_core.config import Settings, load_config
from lcore_core.config.schema import PostgresSchema
from lcore_core.errors import ConfigError, StorageError
from lcore_core.plugins import load_plugins
from lcore_core.storage import Database, Storage, StorageSettings

PG = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
      "ssl_mode": "disable", "gss_encmode": "disable"}
DIRECT = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def section(**extra: Any) -> Settings:
    return Settings.wrap({"postgres": PostgresSchema().load({**PG, **extra})})


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    name = f"lcore_timeouts_{uuid.uuid4().hex[:8]}"
    yield name
    async with await psycopg.AsyncConnection.connect(DIRECT, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


async def show(db: Database, setting: str) -> str:
    [row] = await db.fetch(f"SHOW {setting}")
    return str(row[setting])


# --- statement timeout -----------------------------------------------------------------------

async def test_a_statement_waiting_on_a_lock_is_cancelled_and_frees_its_connection(
        namespace: str) -> None:
    db = Database(StorageSettings.from_section(section(namespace=namespace, statement_timeout=1,
                                                       max_connections=1)))
    try:
        await db.execute(f'CREATE SCHEMA IF NOT EXISTS "{namespace}"')
        await db.execute("CREATE TABLE counter (id int PRIMARY KEY, n int)")
        await db.execute("INSERT INTO counter VALUES (1, 0)")
        async with await psycopg.AsyncConnection.connect(DIRECT) as holder:
            await holder.execute(f'SELECT * FROM "{namespace}".counter FOR UPDATE')  # row lock
            started = time.monotonic()
            with pytest.raises(StorageError) as raised:
                await asyncio.wait_for(
                    db.execute("UPDATE counter SET n = n + 1 WHERE id = %s", (1,)), 20)
            assert time.monotonic() - started < 10
            assert "statement timeout" in str(raised.value.cause)  # type: ignore[attr-defined]
            await holder.rollback()
        # The pool's one connection came back: the next statement runs.
        assert await db.execute("UPDATE counter SET n = n + 1 WHERE id = %s", (1,)) == 1
        assert (await db.fetch("SELECT n FROM counter"))[0]["n"] == 1
    finally:
        await db.close()


async def test_the_statement_timeout_is_set_on_every_session(namespace: str, tmp_path: Path
                                                               ) -> None:
    path = tmp_path / "c.yaml"  # the default, from a configuration file without the key
    path.write_text("name: x\nllama_stack:\n  url: http://127.0.0.1:9\ndatabase:\n  postgres:\n"
                    "    db: test\n    user: postgres\n    host: 127.0.0.1\n"
                    "    ssl_mode: disable\n    gss_encmode: disable\n"
                    f"    namespace: {namespace}\n")
    config = load_config(path, load_plugins(entrypoints=False))
    for settings, expected in ((StorageSettings.from_section(config.database), "30s"),
                               (StorageSettings.from_section(section(statement_timeout=7)), "7s"),
                               (StorageSettings.from_section(section(statement_timeout=0)), "0")):
        db = Database(settings)
        try:
            assert await show(db, "statement_timeout") == expected
        finally:
            await db.close()


def test_a_negative_statement_timeout_is_refused_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nllama_stack:\n  url: http://127.0.0.1:9\ndatabase:\n  postgres:\n"
                    "    db: test\n    user: postgres\n    statement_timeout: -1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:8: database\.postgres\.statement_timeout"):
        load_config(path, load_plugins(entrypoints=False))


# --- TLS and keepalives reach the session ----------------------------------------------------

async def test_ssl_mode_reaches_the_driver() -> None:
    async with await psycopg.AsyncConnection.connect(DIRECT) as conn:
        server_ssl = (await (await conn.execute("SHOW ssl")).fetchone())[0] == "on"  # type: ignore[index]
    db = Database(StorageSettings.from_section(section(ssl_mode="require")))
    try:
        if server_ssl:
            rows = await db.fetch("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert rows == [{"ssl": True}]
        else:  # this machine's server: require cannot be met, and says so
            with pytest.raises(StorageError) as raised:
                await db.fetch("SELECT 1")
            assert "SSL" in str(raised.value.cause)  # type: ignore[attr-defined]
    finally:
        await db.close()
    plain = Database(StorageSettings.from_section(section(ssl_mode="disable")))
    try:
        assert await plain.fetch("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") \
            == [{"ssl": False}]
    finally:
        await plain.close()


async def test_sessions_keep_tcp_alive() -> None:
    db = Database(StorageSettings.from_section(section()))
    try:
        async with db.pool.connection() as conn:
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:  # the session's own socket
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    finally:
        await db.close()


# --- one place, two sections -----------------------------------------------------------------

async def test_a_second_section_on_a_place_is_told_which_settings_it_does_not_get() -> None:
    storage = Storage()
    with capture_logs() as logs:
        first = storage.database(section(max_connections=4), where="database")
        again = storage.database(section(max_connections=4), where="conversation_cache")
        other = storage.database(section(max_connections=9, statement_timeout=5),
                                 where="quota_handlers")
    assert first is again is other
    assert first.settings.max_connections == 4
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1  # the same settings twice: nothing to say
    assert warnings[0]["section"] == "quota_handlers" and warnings[0]["first"] == "database"
    assert warnings[0]["ignored"] == ("max_connections 9 (it has 4), "
                                      "statement_timeout 5 (it has 30)")
    await storage.close()


async def test_migrations_wait_past_the_statement_timeout(namespace: str) -> None:
    """Another replica migrating (holding the schema lock) for longer than the statement
    timeout: this one waits its turn instead of being cancelled, and the session keeps its
    timeout afterwards."""
    db = Database(StorageSettings.from_section(section(namespace=namespace, statement_timeout=1,
                                                       max_connections=1)))
    key = f"lcore-schema:{namespace}"
    try:
        async with await psycopg.AsyncConnection.connect(DIRECT, autocommit=True) as other:
            await other.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
            migrating = asyncio.create_task(db.migrate("t", [(1, ["CREATE TABLE t (x int)"])]))
            await asyncio.sleep(2.5)  # past the 1 s timeout
            assert not migrating.done()
            await other.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
            assert await asyncio.wait_for(migrating, 20) == 1
        assert await show(db, "statement_timeout") == "1s"
    finally:
        await db.close()
