"""lcore-cache-postgres against the machine's PostgreSQL (127.0.0.1:5432, database `test`).

Everything happens in a schema of this test run, dropped at the end. PostgreSQL missing is a
failure, not a skip. Outages are simulated with a TCP proxy on loopback, so the shared server is
never disturbed.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lcore_core import ConfigError, ConversationCache, StorageError
from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.cache_contract import CacheContract, cache_from_plugins, entry
from lcore_core.testing.tcp_proxy import TcpProxy

PG = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
      "ssl_mode": "disable", "gss_encmode": "disable"}


def _connect() -> Any:
    return psycopg.connect(host=PG["host"], port=PG["port"], dbname=PG["db"], user=PG["user"],
                           connect_timeout=5)


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    """A schema for this test run; fails (never skips) when PostgreSQL cannot be reached."""
    name = f"lcore_cache_test_{uuid.uuid4().hex[:10]}"
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


def pg_cache(namespace: str, **overrides: Any) -> Any:
    return cache_from_plugins("postgres", {**PG, "namespace": namespace, **overrides})


class TestPostgresCache(CacheContract):
    @pytest.fixture
    async def cache(self, namespace: str) -> AsyncIterator[ConversationCache]:
        cache = pg_cache(namespace, max_connections=8)
        yield cache
        await cache.close()

    @pytest.fixture
    async def unreachable_cache(self, namespace: str) -> AsyncIterator[ConversationCache]:
        cache = pg_cache(namespace, port=1)  # nothing listens there
        yield cache
        await cache.close()


def test_registered_by_the_installed_plugin() -> None:
    plugins = load_plugins()
    backend = plugins.cache_backends()["postgres"]
    assert plugins.owner("cache backend", "postgres") == "cache_postgres"
    assert plugins.distribution_of("cache_postgres") == "lcore-cache-postgres"
    assert backend.required and backend.key == "postgres"
    loaded = backend.schema().load({"db": "d", "user": "u"})
    assert (loaded["namespace"], loaded["max_connections"], loaded["ssl_mode"]) == (
        "public", 10, "prefer")


async def test_schema_version_and_tables_live_in_the_namespace(namespace: str) -> None:
    first, second = pg_cache(namespace), pg_cache(namespace)
    await asyncio.gather(first.setup(), second.setup())  # idempotent, even side by side
    await first.close()
    await second.close()
    conn = _connect()
    with conn.cursor() as cursor:
        cursor.execute(f'SELECT component, version FROM "{namespace}".lcore_schema_version')
        assert cursor.fetchall() == [("cache_postgres", 1)]
        cursor.execute("SELECT table_name FROM information_schema.tables "
                       "WHERE table_schema = %s ORDER BY 1", (namespace,))
        assert [r[0] for r in cursor.fetchall()] == [
            "lcore_cache_conversation", "lcore_cache_entry", "lcore_schema_version"]
    conn.close()


async def test_password_file_is_used(namespace: str, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("ignored-by-trust-auth\n")
    cache = pg_cache(namespace, password_path=str(secret))
    await cache.ready()
    assert cache.db.settings.password == "ignored-by-trust-auth"
    await cache.close()


async def test_unreachable_server_is_a_storage_error(namespace: str) -> None:
    cache = pg_cache(namespace, port=1)
    with pytest.raises(StorageError) as caught:
        await cache.insert("u", "conv1", entry(1))
    assert caught.value.status == 500
    body = caught.value.body()["detail"]
    assert body["response"] == "Conversation cache error"
    # Where the database is goes to the log (the error's cause), never to the client.
    assert "127.0.0.1:1/test" in caught.value.cause
    assert "127.0.0.1" not in str(body) and body["cause"] == "the details are in the service log"
    await cache.close()


# --- a TCP proxy to PostgreSQL, to cut the connection without touching the server -------------


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(PG["host"], PG["port"])
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_outage_fails_calls_then_recovers_without_a_new_cache(namespace: str,
                                                                    proxy: TcpProxy) -> None:
    cache = pg_cache(namespace, port=proxy.port, max_connections=4)
    user, conv = f"u-{uuid.uuid4().hex}", "conv-outage"
    await cache.insert(user, conv, entry(1))
    await proxy.cut()
    for call in (cache.insert(user, conv, entry(2)), cache.get(user, conv),
                 cache.list(user), cache.ready()):
        with pytest.raises(StorageError) as caught:
            await call
        assert caught.value.status == 500
    await proxy.start()  # the same port: PostgreSQL is back
    assert await cache.get(user, conv) == [entry(1)]  # nothing of the failed insert
    await cache.insert(user, conv, entry(3))
    assert await cache.get(user, conv) == [entry(1), entry(3)]
    [info] = await cache.list(user)
    assert info.message_count == 2
    await cache.close()


async def test_connection_lost_mid_insert_leaves_nothing_partial(namespace: str) -> None:
    """An insert is one statement: the turn row it writes first goes with the connection when
    the conversation row is not written yet (a COMMIT lost on the wire in a transaction)."""
    cache = pg_cache(namespace, max_connections=4, application_name=namespace)
    user, conv = f"u-{uuid.uuid4().hex}", "conv-lost"
    await cache.insert(user, conv, entry(1))
    holder, killer = _connect(), _connect()  # the first keeps the conversation row locked
    try:
        with holder.cursor() as cursor:
            cursor.execute(f'SELECT 1 FROM "{namespace}".lcore_cache_conversation '
                           "WHERE user_id = %s FOR UPDATE", (user,))
        pending = asyncio.ensure_future(cache.insert(user, conv, entry(2)))
        # The cache's sessions carry the test's own application_name.
        pid = await _waiting_for_a_lock(killer, namespace)  # turn row written, not the other
        with killer.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StorageError):
            await pending
    finally:
        holder.rollback()
        holder.close()
        killer.close()
    assert await cache.get(user, conv) == [entry(1)]
    [info] = await cache.list(user)
    assert info.message_count == 1
    await cache.insert(user, conv, entry(3))  # the pool replaced the lost connection
    assert [e.query for e in await cache.get(user, conv)] == ["question 1", "question 3"]
    await cache.close()


async def _waiting_for_a_lock(conn: Any, application_name: str) -> int:
    """The backend of `application_name` inserting a turn, once it waits for a lock."""
    conn.autocommit = True
    for _ in range(200):
        with conn.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND application_name = %s AND query LIKE %s",
                           (application_name, "%lcore_cache_entry%"))
            row = cursor.fetchone()
        if row:
            return int(row[0])
        await asyncio.sleep(0.05)
    pytest.fail("the insert never waited for the conversation row")


# --- through the app ----------------------------------------------------------------------


def _pg_yaml(namespace: str) -> dict[str, Any]:
    return {"conversation_cache": {"type": "postgres", "postgres": {**PG, "namespace": namespace,
                                                                    "max_connections": 4}},
            "database": {"sqlite": None, "postgres": {**PG, "namespace": namespace}}}


async def test_two_apps_share_conversations(namespace: str, write_config: Any,
                                            serving: Any) -> None:
    first = create_app(write_config(_pg_yaml(namespace), name="first.yaml"))
    second = create_app(write_config(_pg_yaml(namespace), name="second.yaml"))
    conv = f"conv_{secrets.token_hex(24)}"  # the form Llama Stack gives
    async with serving(first) as one, serving(second) as two:
        r1, r2 = first.runtime, second.runtime  # type: ignore[attr-defined]
        assert type(r1.cache.backend).__name__ == "PostgresCache"
        assert r1.cache is not r2.cache
        # What the query pipeline stores for a turn answered by the first process ...
        await r1.userdb.record_turn(conv, "alice", model="m", provider="p")
        await r1.cache.insert("alice", conv, entry(1))
        await r1.cache.set_topic_summary("alice", conv, "shared topic")
        # ... the second process serves.
        response = await two.get(f"/v2/conversations/{conv}?user_id=alice")
        assert response.status_code == 200, await response.get_json()
        history = (await response.get_json())["chat_history"]
        assert [m["content"] for m in history[0]["messages"]] == ["question 1", "answer 1"]
        [info] = await r2.cache.list("alice")
        assert (info.conversation_id, info.topic_summary) == (conv, "shared topic")
        deleted = await two.delete(f"/v2/conversations/{conv}?user_id=alice")
        assert deleted.status_code in (200, 503)  # the stand-in Llama Stack may refuse
        for client in (one, two):
            assert (await client.get("/readiness")).status_code == 200


async def test_app_answers_500_json_while_the_cache_is_down(namespace: str, write_config: Any,
                                                            serving: Any, proxy: TcpProxy) -> None:
    yaml = {"conversation_cache": {"type": "postgres", "postgres": {
        **PG, "namespace": namespace, "port": proxy.port}}}
    app = create_app(write_config(yaml))
    conv = f"conv_{secrets.token_hex(24)}"  # the form Llama Stack gives
    async with serving(app) as client:
        runtime = app.runtime  # type: ignore[attr-defined]
        await runtime.userdb.record_turn(conv, "bob", model="m", provider="p")
        await runtime.cache.insert("bob", conv, entry(1))
        await proxy.cut()
        response = await client.get(f"/v2/conversations/{conv}?user_id=bob")
        assert response.status_code == 500
        body = await response.get_json()
        assert body["detail"]["response"] == "Conversation cache error"
        assert "Traceback" not in str(body)
        # No driver message (host, port, SQL state) reaches the client or the probe.
        assert "127.0.0.1" not in str(body) and str(proxy.port) not in str(body)
        probe = await client.get("/readiness")
        assert probe.status_code == 503
        assert "127.0.0.1" not in await probe.get_data(as_text=True)
        await proxy.start()
        response = await client.get(f"/v2/conversations/{conv}?user_id=bob")
        assert response.status_code == 200
        assert (await client.get("/readiness")).status_code == 200


def test_postgres_section_is_validated(write_config: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(write_config({"conversation_cache": {"type": "postgres", "postgres": {
            "db": "test", "user": "postgres", "ssl_mode": "sometimes", "pool": 3}}}))
    text = str(caught.value)
    assert "conversation_cache.postgres.ssl_mode" in text
    assert "conversation_cache.postgres.pool" in text


async def test_the_cache_shares_the_user_db_place_and_is_checked_once(
        make_app: Any, serving: Any, namespace: str) -> None:
    """A cache configured on the user DB's place uses the same Database (one connection
    budget); the core sets it up, checks it once in /readiness and closes it at shutdown."""
    from lcore_cache_postgres import plugin
    place = {**PG, "password": "", "namespace": namespace, "max_connections": 2}
    app = make_app({"database": {"sqlite": None, "postgres": place},
                    "conversation_cache": {"type": "postgres", "postgres": place},
                    "authentication": {"module": "noop"}}, plugin)
    runtime = app.runtime
    assert runtime.cache.db is runtime.userdb.db
    async with serving(app) as client:
        assert await runtime.userdb.db.has_table("lcore_cache_entry")  # set up at start
        response = await client.get("/readiness")
        providers = [p["provider_id"] for p in (await response.get_json())["providers"]]
        assert providers.count("cache") == 1
        assert all("cache" not in p for p in providers if p != "cache")
