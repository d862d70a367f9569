"""Contracts every storage backend must pass: a `Database` (`DatabaseContract`), the user DB
(`UserDBContract`) and an A2A state store (`A2AStateContract`). The conversation cache has its
own (`lcore_core.testing.cache_contract`).

Subclass one in a test module and override its fixture so that it yields a fresh object (and
closes it afterwards); pytest then runs every test below against it::

    from lcore_core.testing.storage_contract import DatabaseContract, UserDBContract

    class TestMyDatabase(DatabaseContract):
        @pytest.fixture
        async def database(self, tmp_path):
            db = Database(StorageSettings.from_section({"sqlite": {"db_path": ...}}))
            yield db
            await db.close()

LCore's own suites run each against SQLite and PostgreSQL (tests/core/test_storage.py,
tests/plugins/a2a/test_state.py). Tests use random keys (users, tables), so a backend may keep
its storage between tests. Needs pytest-asyncio (auto mode).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from lcore_core.errors import StorageError
from lcore_core.storage import Database, Duplicate

__all__ = ["A2AStateContract", "DatabaseContract", "UserDBContract"]


def _key(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class DatabaseContract:
    """What every `Database` must do; override the `database` fixture."""

    @pytest.fixture
    async def database(self) -> AsyncIterator[Database]:
        pytest.fail("a DatabaseContract subclass must override the `database` fixture")
        yield  # pragma: no cover

    async def test_migrations_run_once_and_in_order(self, database: Database) -> None:
        table, component = _key("t_mig"), _key("mig")
        ran: list[int] = []

        def step(n: int) -> Any:
            async def run(tx: Any) -> None:
                ran.append(n)
            return run

        steps = [(1, [f'CREATE TABLE IF NOT EXISTS "{table}" (k VARCHAR(8) PRIMARY KEY)',
                      step(1)]),
                 (2, [lambda tx: tx.add_column(table, "v", "TEXT"), step(2)])]
        assert await database.version(component) == 0
        assert await database.migrate(component, steps[:1]) == 1
        assert await database.migrate(component, steps) == 2
        assert await database.migrate(component, steps) == 2
        assert ran == [1, 2]
        assert await database.version(component) == 2
        # A database newer than the code stays at its version.
        assert await database.migrate(component, steps[:1]) == 2
        assert await database.has_table(table)
        await database.execute(f'INSERT INTO "{table}" (k, v) VALUES (%s, %s)', ("a", "x"))
        assert await database.fetch(f'SELECT k, v FROM "{table}"') == [{"k": "a", "v": "x"}]

    async def test_a_failed_transaction_keeps_nothing(self, database: Database) -> None:
        table = _key("t_tx")
        await database.migrate(_key("tx"), [(1, [
            f'CREATE TABLE IF NOT EXISTS "{table}" (k VARCHAR(8) PRIMARY KEY)'])])
        with pytest.raises(RuntimeError):
            async with database.transaction(lock="k") as tx:
                await tx.execute(f'INSERT INTO "{table}" (k) VALUES (%s)', ("a",))
                raise RuntimeError("abort")
        assert await database.fetch(f'SELECT k FROM "{table}"') == []

    async def test_errors_are_storage_errors(self, database: Database) -> None:
        table = _key("t_err")
        await database.migrate(_key("err"), [(1, [
            f'CREATE TABLE IF NOT EXISTS "{table}" (k VARCHAR(8) PRIMARY KEY)'])])
        await database.execute(f'INSERT INTO "{table}" (k) VALUES (%s)', ("a",))
        with pytest.raises(Duplicate):
            await database.execute(f'INSERT INTO "{table}" (k) VALUES (%s)', ("a",))
        with pytest.raises(StorageError) as caught:
            await database.fetch(f'SELECT nothing FROM "{table}"')
        # The driver's message is for the log; the client reads that it is there.
        assert caught.value.private and caught.value.status == 500
        assert caught.value.body()["detail"]["cause"] != caught.value.cause
        await database.ready()

    async def test_locked_transactions_take_turns(self, database: Database) -> None:
        """Read-then-write under one lock key, concurrently: no update is lost."""
        table = _key("t_lock")
        await database.migrate(_key("lock"), [(1, [
            f'CREATE TABLE IF NOT EXISTS "{table}" (k VARCHAR(8) PRIMARY KEY, n INTEGER)'])])
        await database.execute(f'INSERT INTO "{table}" (k, n) VALUES (%s, %s)', ("c", 0))

        async def bump() -> None:
            async with database.transaction(lock=table) as tx:
                [row] = await tx.fetch(f'SELECT n FROM "{table}" WHERE k = %s', ("c",))
                await tx.execute(f'UPDATE "{table}" SET n = %s WHERE k = %s',
                                 (row["n"] + 1, "c"))

        await asyncio.gather(*(bump() for _ in range(20)))
        assert (await database.fetch(f'SELECT n FROM "{table}"'))[0]["n"] == 20


class UserDBContract:
    """What the user DB must do on any Database; override the `userdb` fixture (set up)."""

    @pytest.fixture
    async def userdb(self) -> AsyncIterator[Any]:
        pytest.fail("a UserDBContract subclass must override the `userdb` fixture")
        yield  # pragma: no cover

    async def test_turns_are_counted_and_listed_newest_first(self, userdb: Any) -> None:
        alice, bob = _key("alice"), _key("bob")
        a, b, c = _key("conv"), _key("conv"), _key("conv")
        await userdb.record_turn(a, alice, model="m1", provider="p", topic_summary="A")
        await userdb.record_turn(b, alice, model="m1", provider="p", topic_summary="B")
        await userdb.record_turn(a, alice, model="m2", provider="p", topic_summary="X")
        await userdb.record_turn(c, bob, model="m1", provider="p")
        mine = await userdb.list(alice)
        assert [row["conversation_id"] for row in mine] == [a, b]
        assert (mine[0]["message_count"], mine[0]["last_used_model"],
                mine[0]["topic_summary"]) == (2, "m2", "A")  # the summary of the first turn
        assert {a, b, c} <= {row["conversation_id"] for row in await userdb.list(None)}

    async def test_get_delete_and_topic(self, userdb: Any) -> None:
        conv, user = _key("conv"), _key("carol")
        assert await userdb.get(conv) is None
        await userdb.record_turn(conv, user, model="m", provider="p")
        assert (await userdb.get(conv))["user_id"] == user
        assert await userdb.set_topic_summary(conv, "new topic")
        assert (await userdb.get(conv))["topic_summary"] == "new topic"
        assert await userdb.delete(conv)
        assert not await userdb.delete(conv)
        assert await userdb.get(conv) is None

    async def test_concurrent_turns_lose_no_update(self, userdb: Any) -> None:
        conv, user = _key("conv"), _key("dave")
        await asyncio.gather(*(userdb.record_turn(conv, user, model="m", provider="p")
                               for _ in range(20)))
        assert (await userdb.get(conv))["message_count"] == 20

    async def test_chains_keep_their_response_ids(self, userdb: Any) -> None:
        user, chain, kept = _key("erin"), _key("conv"), _key("conv")
        for response_id in ("resp_1", None, "resp_3"):
            await userdb.record_turn(chain, user, model="m", provider="p", chained=True,
                                     response_id=response_id)
        assert (await userdb.get(chain))["response_ids"] == ["resp_1", "resp_3"]
        await userdb.record_turn(kept, user, model="m", provider="p")
        await userdb.record_turn(kept, user, model="m", provider="p", chained=True,
                                 response_id="resp_9")
        assert (await userdb.get(kept))["response_ids"] is None
        found = await userdb.find_response("resp_3", user)
        assert found is not None and found["conversation_id"] == chain
        assert await userdb.find_response("resp_", user) is None  # whole ids only
        assert await userdb.find_response("resp_3", _key("other")) is None
        assert all("response_ids" not in row for row in await userdb.list(user))

    async def test_ready(self, userdb: Any) -> None:
        await userdb.ready()
        assert await userdb.installed()


@dataclass(frozen=True)
class _Context:
    context_id: str
    user_id: str
    conversation_id: str


@dataclass(frozen=True)
class _Task:
    task_id: str
    context_id: str
    user_id: str
    task: dict[str, Any]


class A2AStateContract:
    """What an A2A state store must do; override the `store` fixture (set up)."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[Any]:
        pytest.fail("an A2AStateContract subclass must override the `store` fixture")
        yield  # pragma: no cover

    async def test_contexts_are_per_user(self, store: Any) -> None:
        alice, bob, context = _key("alice"), _key("bob"), _key("ctx")
        assert await store.get_context(alice, context) is None
        await store.save_context(_Context(context, alice, "conv_a"))
        await store.save_context(_Context(context, bob, "conv_b"))
        found = await store.get_context(alice, context)
        assert (found.context_id, found.user_id, found.conversation_id) == (
            context, alice, "conv_a")
        assert (await store.get_context(bob, context)).conversation_id == "conv_b"
        await store.save_context(_Context(context, alice, "conv_a2"))  # replaced
        assert (await store.get_context(alice, context)).conversation_id == "conv_a2"

    async def test_tasks_are_read_through_their_owner(self, store: Any) -> None:
        owner, task_id = _key("owner"), _key("task")
        task = {"id": task_id, "contextId": "c", "kind": "task",
                "status": {"state": "working"}, "history": [{"text": "hé"}]}
        await store.save_task(_Task(task_id, "c", owner, task))
        found = await store.get_task(owner, task_id)
        assert (found.task_id, found.context_id, found.user_id, found.task) == (
            task_id, "c", owner, task)
        assert await store.get_task(_key("other"), task_id) is None
        assert (await store.get_task(None, task_id)).user_id == owner
        done = {**task, "status": {"state": "completed"}}
        await store.save_task(_Task(task_id, "c", owner, done))
        assert (await store.get_task(owner, task_id)).task == done

    async def test_ready(self, store: Any) -> None:
        await store.ready()
