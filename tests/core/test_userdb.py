"""The user DB on SQLite (temp dir) and on the machine's real PostgreSQL (its own schema)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lcore_core.config import Settings
from lcore_core.storage import Database, StorageSettings
from lcore_core.userdb import UserDB

PG = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres", "password": "",
      "password_path": None, "ssl_mode": "disable", "gss_encmode": "disable",
      "ca_cert_path": None}


@pytest.fixture(params=["sqlite", "postgres"])
async def userdb(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UserDB]:
    if request.param == "sqlite":
        settings = Settings.wrap({"sqlite": {"db_path": str(tmp_path / "user.db")}})
    else:
        namespace = f"lcore_test_{uuid.uuid4().hex[:8]}"
        settings = Settings.wrap({"postgres": {**PG, "namespace": namespace}})
    db = UserDB.open(settings)
    await db.setup()
    await db.setup()  # idempotent
    yield db
    if request.param == "postgres":
        await db.db.execute(f'DROP SCHEMA "{namespace}" CASCADE')
    await db.close()


async def test_turns_are_counted_and_listed_newest_first(userdb: UserDB) -> None:
    await userdb.record_turn("conv_a", "alice", model="m1", provider="p", topic_summary="A")
    await userdb.record_turn("conv_b", "alice", model="m1", provider="p", topic_summary="B")
    await userdb.record_turn("conv_a", "alice", model="m2", provider="p", topic_summary="X")
    await userdb.record_turn("conv_c", "bob", model="m1", provider="p")
    mine = await userdb.list("alice")
    assert [c["conversation_id"] for c in mine] == ["conv_a", "conv_b"]
    first = mine[0]
    assert first["message_count"] == 2
    assert first["last_used_model"] == "m2"
    assert first["topic_summary"] == "A"  # the summary is set on creation only
    assert {c["conversation_id"] for c in await userdb.list(None)} == {"conv_a", "conv_b",
                                                                       "conv_c"}


async def test_get_delete_and_topic(userdb: UserDB) -> None:
    assert await userdb.get("conv_x") is None
    await userdb.record_turn("conv_x", "carol", model="m", provider="p")
    assert (await userdb.get("conv_x"))["user_id"] == "carol"
    assert await userdb.set_topic_summary("conv_x", "new topic")
    assert (await userdb.get("conv_x"))["topic_summary"] == "new topic"
    assert await userdb.delete("conv_x")
    assert not await userdb.delete("conv_x")
    assert await userdb.get("conv_x") is None


async def test_a_generated_topic_does_not_replace_one_already_there(userdb: UserDB) -> None:
    await userdb.record_turn("conv_t", "carol", model="m", provider="p")
    assert await userdb.set_topic_summary("conv_t", "generated", only_if_unset=True)
    assert not await userdb.set_topic_summary("conv_t", "generated again", only_if_unset=True)
    assert await userdb.set_topic_summary("conv_t", "renamed")
    assert (await userdb.get("conv_t"))["topic_summary"] == "renamed"


async def test_concurrent_turns_lose_no_update(userdb: UserDB) -> None:
    await asyncio.gather(*(userdb.record_turn("conv_c1", "dave", model="m", provider="p")
                           for _ in range(20)))
    assert (await userdb.get("conv_c1"))["message_count"] == 20


async def test_chained_turns_keep_their_response_ids_in_order(userdb: UserDB) -> None:
    await userdb.record_turn("conv_r", "erin", model="m", provider="p", chained=True,
                             response_id="resp_1")
    await userdb.record_turn("conv_r", "erin", model="m", provider="p", chained=True,
                             response_id=None)  # a turn Llama Stack stored no response for
    await userdb.record_turn("conv_r", "erin", model="m", provider="p", chained=True,
                             response_id="resp_3")
    row = await userdb.get("conv_r")
    assert row["response_ids"] == ["resp_1", "resp_3"]
    assert row["message_count"] == 3
    # A conversation kept by Llama Stack stays one, whatever a later turn says.
    await userdb.record_turn("conv_l", "erin", model="m", provider="p")
    await userdb.record_turn("conv_l", "erin", model="m", provider="p", chained=True,
                             response_id="resp_9")
    assert (await userdb.get("conv_l"))["response_ids"] is None
    # A chain whose first turn had no stored response is still a chain.
    await userdb.record_turn("conv_e", "erin", model="m", provider="p", chained=True)
    assert (await userdb.get("conv_e"))["response_ids"] == []
    # The listing does not carry them.
    assert all("response_ids" not in c for c in await userdb.list("erin"))


async def test_a_response_id_finds_its_conversation(userdb: UserDB) -> None:
    for conversation, user, ids in (("conv_f1", "fay", ["resp_a1", "resp_a12"]),
                                    ("conv_f2", "fay", ["resp_a_2"]),
                                    ("conv_g1", "gus", ["resp_b1"])):
        for response_id in ids:
            await userdb.record_turn(conversation, user, model="m", provider="p",
                                     chained=True, response_id=response_id)
    found = await userdb.find_response("resp_a1", "fay")
    assert found is not None and found["conversation_id"] == "conv_f1"
    assert found["response_ids"] == ["resp_a1", "resp_a12"]
    # Whole ids only: neither a prefix nor LIKE's `_` wildcard matches another id.
    assert await userdb.find_response("resp_a", "fay") is None
    assert await userdb.find_response("resp_ax2", "fay") is None
    assert (await userdb.find_response("resp_a_2", "fay") or {})["conversation_id"] == "conv_f2"
    # Another user's response only when the caller may see everyone's (None).
    assert await userdb.find_response("resp_b1", "fay") is None
    assert (await userdb.find_response("resp_b1", None) or {})["conversation_id"] == "conv_g1"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_version_1_table_gains_the_new_column(kind: str, tmp_path: Path) -> None:
    """A user DB written by schema 1 (no response_ids) is upgraded in place, rows kept."""
    namespace = f"lcore_test_{uuid.uuid4().hex[:8]}"
    settings = Settings.wrap({"sqlite": {"db_path": str(tmp_path / "old.db")}} if kind == "sqlite"
                             else {"postgres": {**PG, "namespace": namespace}})
    old = Database(StorageSettings.from_section(settings))
    stamp = "TIMESTAMP" if kind == "postgres" else "DATETIME"
    if kind == "postgres":
        await old.execute(f'CREATE SCHEMA "{namespace}"')
    await old.execute(
            "CREATE TABLE lcore_user_conversation (id VARCHAR(128) PRIMARY KEY, user_id "
            "VARCHAR(256) NOT NULL, topic_summary TEXT, last_used_model VARCHAR(256) NOT NULL, "
            f"last_used_provider VARCHAR(256) NOT NULL, created_at {stamp} NOT NULL, "
            f"last_message_at {stamp} NOT NULL, message_count INTEGER NOT NULL)")
    await old.execute("INSERT INTO lcore_user_conversation VALUES ('conv_old', 'frank', 'T', "
                      "'m', 'p', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 4)")
    await old.close()
    db = UserDB.open(settings)
    try:
        await db.setup()
        row = await db.get("conv_old")
        assert row is not None
        assert (row["message_count"], row["response_ids"]) == (4, None)
        await db.record_turn("conv_new", "frank", model="m", provider="p", chained=True,
                             response_id="resp_a")
        assert (await db.get("conv_new"))["response_ids"] == ["resp_a"]
        assert await db.db.version("userdb") == 2
    finally:
        if kind == "postgres":
            await db.db.execute(f'DROP SCHEMA "{namespace}" CASCADE')
        await db.close()


async def test_unreachable_database_is_a_storage_error(tmp_path: Path) -> None:
    from lcore_core.errors import StorageError

    settings = Settings.wrap({"postgres": {**PG, "port": 1, "namespace": "x"}})
    db = UserDB.open(settings)
    for call in (db.get("conv_1"), db.list("u1")):
        with pytest.raises(StorageError) as caught:
            await call
        assert caught.value.status == 500
        assert "port 1 failed" in str(caught.value.cause)


async def test_replicas_creating_the_schema_together_all_succeed() -> None:
    """Eight user DBs (own connections, as replicas have) set up one fresh schema at once.

    Without serialisation PostgreSQL's CREATE TABLE IF NOT EXISTS collides on its catalog
    (duplicate key in pg_type) and some of them fail to start.
    """
    namespace = f"lcore_race_{uuid.uuid4().hex[:8]}"
    settings = Settings.wrap({"postgres": {**PG, "namespace": namespace}})
    dbs = [UserDB.open(settings) for _ in range(8)]
    try:
        for round_ in range(3):  # the race window is small: give it a few chances
            results = await asyncio.gather(*(db.setup() for db in dbs), return_exceptions=True)
            assert [r for r in results if isinstance(r, BaseException)] == [], round_
            await dbs[0].record_turn("conv_r", "u", model="m", provider="p")
            assert (await dbs[-1].get("conv_r"))["user_id"] == "u"

            await dbs[0].db.execute(f'DROP SCHEMA "{namespace}" CASCADE')
            for db in dbs:
                await db.close()
    finally:
        for db in dbs:
            await db.close()


async def test_kept_connections_survive_a_postgres_restart() -> None:
    """Worker threads keep their connections; after a restart (here: every connection cut by a
    proxy) the next calls reconnect by themselves instead of failing once per thread."""
    from lcore_core.testing.tcp_proxy import TcpProxy

    proxy = TcpProxy(PG["host"], PG["port"])
    await proxy.start()
    namespace = f"lcore_restart_{uuid.uuid4().hex[:8]}"
    db = UserDB.open(Settings.wrap({"postgres": {**PG, "port": proxy.port,
                                                 "namespace": namespace}}))
    try:
        await db.setup()
        # Several calls at once, so that several worker threads hold a connection.
        await asyncio.gather(*(db.record_turn(f"conv_{i}", "u", model="m", provider="p")
                               for i in range(8)))
        await proxy.cut()
        await proxy.start()
        results = await asyncio.gather(*(db.record_turn(f"conv_{i}", "u", model="m",
                                                        provider="p") for i in range(8)),
                                       return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert {c["message_count"] for c in await db.list("u")} == {2}
    finally:
        await proxy.close()
        direct = UserDB.open(Settings.wrap({"postgres": PG}))
        await direct.db.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        await direct.close()
