"""Contracts every storage backend must pass: a `Database` (`DatabaseContract`), the user DB
(`UserDBContract`), an A2A state store (`A2AStateContract`) and the quota service on its
store (`QuotaContract`). The conversation cache has its own
(`lcore_core.testing.cache_contract`).

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
tests/plugins/a2a/test_state.py, tests/plugins/quota/test_contract.py). Tests use random keys
(users, tables, limiters), so a backend may keep its storage between tests. Needs
pytest-asyncio (auto mode).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from lcore_core.auth import AuthTuple
from lcore_core.errors import QuotaExceeded, StorageError
from lcore_core.events import QuotaTicket, Usage
from lcore_core.storage import Database, Duplicate

__all__ = ["A2AStateContract", "DatabaseContract", "QuotaClock", "QuotaContract",
           "UserDBContract", "assert_not_ready"]


def _key(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def assert_not_ready(store: Any, fixture: str) -> None:
    """`store.ready()` fails with `StorageError` on a place it cannot reach; `store` is None
    when the subclass did not override `fixture` (the test is then skipped, saying so)."""
    if store is None:
        pytest.skip(f"override the `{fixture}` fixture (this backend on a place it cannot "
                    f"reach) to check that ready() fails")
    with pytest.raises(StorageError):
        await store.ready()


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

    @pytest.fixture
    async def unreachable_userdb(self) -> AsyncIterator[Any]:
        """Override: a user DB on a place it cannot reach (a closed port, a path under a
        file); None leaves `ready()`'s failure unchecked."""
        yield None

    async def test_ready(self, userdb: Any) -> None:
        await userdb.ready()
        assert await userdb.installed()

    async def test_ready_fails_where_it_cannot_serve(self, unreachable_userdb: Any) -> None:
        await assert_not_ready(unreachable_userdb, "unreachable_userdb")


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

    @pytest.fixture
    async def unreachable_store(self) -> AsyncIterator[Any]:
        """Override: a store on a place it cannot reach; None leaves `ready()`'s failure
        unchecked (a store kept in memory cannot fail it)."""
        yield None

    async def test_ready(self, store: Any) -> None:
        await store.ready()

    async def test_ready_fails_where_it_cannot_serve(self, unreachable_store: Any) -> None:
        await assert_not_ready(unreachable_store, "unreachable_store")


# --- quota ------------------------------------------------------------------------------------

QUOTA_START = dt.datetime(2025, 1, 15, 12, 0, 0, tzinfo=dt.UTC)  # a Wednesday noon


class QuotaClock:
    """The time a quota service sees (aware UTC); the contract moves it."""

    def __init__(self, now: dt.datetime = QUOTA_START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def _limiter(name: str, initial: int, *, cluster: bool = False, increase: int = 0,
             period: str = "1 day") -> dict[str, Any]:
    return {"name": name, "type": "cluster_limiter" if cluster else "user_limiter",
            "initial_quota": initial, "quota_increase": increase, "period": period}


def _ticket() -> QuotaTicket:
    return QuotaTicket(query="q", endpoint="/v1/query")


def _usage(input_tokens: int, output_tokens: int = 0) -> Usage:
    return Usage(input_tokens, output_tokens, "openai", "scripted-llm")


class QuotaContract:
    """What a quota service must do on its storage; override the `make_quota` fixture.

    `make_quota(section, clock)` returns a set-up quota service (lcore-quota's `Quota`, or one
    with its methods: `check`, `consume`, `release`, `status`, `apply_periods`,
    `set_available`, `increase`, `usage_totals`) for `section` (a `quota_handlers` section
    without its storage keys, which the fixture adds) on the clock given, and closes it at the
    end. Every service it makes in one test shares one store (replicas). Limiter names and
    users are random, so the store may be kept between tests.
    """

    @pytest.fixture
    async def make_quota(self) -> AsyncIterator[Any]:
        pytest.fail("a QuotaContract subclass must override the `make_quota` fixture")
        yield  # pragma: no cover

    @pytest.fixture
    def clock(self) -> QuotaClock:
        return QuotaClock()

    @staticmethod
    def section(*limiters: dict[str, Any], history: bool = False) -> dict[str, Any]:
        return {"limiters": list(limiters), "reservation_tokens": 100,
                "reservation_chars_per_token": 0, "enable_token_history": history}

    @staticmethod
    async def spend(quota: Any, user: str, tokens: int) -> None:
        ticket = _ticket()
        await quota.check(AuthTuple(user, user), ticket)
        await quota.consume(AuthTuple(user, user), _usage(tokens), ticket)

    async def test_reserve_then_commit_to_the_real_usage(self, make_quota: Any,
                                                         clock: QuotaClock) -> None:
        name, alice, bob = _key("daily"), _key("alice"), _key("bob")
        quota = await make_quota(self.section(_limiter(name, 1000)), clock)
        ticket = _ticket()
        await quota.check(AuthTuple(alice, alice), ticket)
        assert await quota.status(alice) == {name: 900}  # the estimate is held meanwhile
        await quota.consume(AuthTuple(alice, alice), _usage(30, 12), ticket)
        assert await quota.status(alice) == {name: 958}
        await self.spend(quota, alice, 350)  # above the estimate: charged all the same
        assert await quota.status(alice) == {name: 608}
        assert await quota.status(bob) == {name: 1000}  # budgets are per user

    async def test_release_refunds_the_reservation_once(self, make_quota: Any,
                                                        clock: QuotaClock) -> None:
        name, alice = _key("daily"), _key("alice")
        quota = await make_quota(self.section(_limiter(name, 1000)), clock)
        ticket = _ticket()
        await quota.check(AuthTuple(alice, alice), ticket)
        await quota.release(ticket)
        await quota.release(ticket)
        assert await quota.status(alice) == {name: 1000}

    async def test_limits_refuse_all_or_nothing(self, make_quota: Any,
                                                clock: QuotaClock) -> None:
        user, cluster = _key("user"), _key("cluster")
        alice, bob = _key("alice"), _key("bob")
        quota = await make_quota(self.section(_limiter(user, 10_000),
                                              _limiter(cluster, 350, cluster=True)), clock)
        await self.spend(quota, alice, 150)
        await self.spend(quota, bob, 150)  # the cluster's budget is shared
        assert await quota.status(alice) == {user: 9850, cluster: 50}
        with pytest.raises(QuotaExceeded) as caught:
            await quota.check(AuthTuple(bob, bob), _ticket())
        assert caught.value.status == 429
        assert caught.value.extra["limiter"] == cluster
        # Nothing stays held on the user limiter that had room.
        assert await quota.status(bob) == {user: 9850, cluster: 50}

    async def test_set_revoke_and_increase_last_until_the_reset(self, make_quota: Any,
                                                                 clock: QuotaClock) -> None:
        name, alice = _key("daily"), _key("alice")
        quota = await make_quota(self.section(_limiter(name, 300)), clock)
        await quota.set_available(name, alice, 0, revoke=True)
        with pytest.raises(QuotaExceeded):
            await quota.check(AuthTuple(alice, alice), _ticket())
        await quota.increase(name, alice, 120)
        assert await quota.status(alice) == {name: 120}
        await quota.set_available(name, alice, 5000)
        assert await quota.status(alice) == {name: 5000}
        clock.advance(days=1)
        assert await quota.apply_periods() == 1
        assert await quota.status(alice) == {name: 300}

    async def test_history_per_user_provider_model(self, make_quota: Any,
                                                   clock: QuotaClock) -> None:
        name, alice, bob = _key("daily"), _key("alice"), _key("bob")
        quota = await make_quota(self.section(_limiter(name, 10_000), history=True), clock)
        for tokens in (10, 20):
            ticket = _ticket()
            await quota.check(AuthTuple(alice, alice), ticket)
            await quota.consume(AuthTuple(alice, alice), _usage(tokens, tokens + 1), ticket)
        ticket = _ticket()
        await quota.check(AuthTuple(alice, alice), ticket)
        await quota.release(ticket)  # a failed call leaves no history
        [row] = await quota.usage_totals(alice)
        assert (row["provider"], row["model"], row["input_tokens"], row["output_tokens"],
                row["calls"]) == ("openai", "scripted-llm", 30, 32, 2)
        assert await quota.usage_totals(bob) == []
        off = await make_quota(self.section(_limiter(_key("daily"), 10_000)), clock)
        await self.spend(off, bob, 10)
        assert await off.usage_totals(bob) == []

    async def test_reset_once_per_period_across_replicas(self, make_quota: Any,
                                                         clock: QuotaClock) -> None:
        daily, topup, alice = _key("daily"), _key("topup"), _key("alice")
        section = self.section(_limiter(daily, 300),
                               _limiter(topup, 500, increase=50, period="1 hour"))
        first, second = await make_quota(section, clock), await make_quota(section, clock)
        await self.spend(first, alice, 280)
        assert await second.status(alice) == {daily: 20, topup: 220}
        assert await first.apply_periods() == 0
        clock.advance(hours=1)
        assert await first.apply_periods() == 1
        assert await second.apply_periods() == 0  # the other replica finds it done
        assert await second.status(alice) == {daily: 20, topup: 270}
        clock.advance(hours=11)  # midnight: both periods turn
        assert sum(await asyncio.gather(first.apply_periods(), second.apply_periods())) == 2
        assert await first.status(alice) == {daily: 300, topup: 320}

    async def test_a_reservation_across_a_reset_is_not_refunded(self, make_quota: Any,
                                                               clock: QuotaClock) -> None:
        name, alice = _key("daily"), _key("alice")
        quota = await make_quota(self.section(_limiter(name, 300)), clock)
        ticket = _ticket()
        await quota.check(AuthTuple(alice, alice), ticket)
        clock.advance(hours=12)
        assert await quota.apply_periods() == 1
        await quota.consume(AuthTuple(alice, alice), _usage(40), ticket)
        assert await quota.status(alice) == {name: 260}

    async def test_concurrent_reservations_never_overspend(self, make_quota: Any,
                                                           clock: QuotaClock) -> None:
        name, cluster, alice = _key("user"), _key("cluster"), _key("alice")
        section = self.section(_limiter(name, 2_000), _limiter(cluster, 10**9, cluster=True))
        replicas = [await make_quota(section, clock), await make_quota(section, clock)]
        admitted = 0

        async def one(index: int) -> None:
            nonlocal admitted
            quota, ticket = replicas[index % 2], _ticket()
            try:
                await quota.check(AuthTuple(alice, alice), ticket)
            except QuotaExceeded:
                return
            admitted += 1
            await asyncio.sleep(0)
            await quota.consume(AuthTuple(alice, alice), _usage(100), ticket)

        await asyncio.gather(*(one(i) for i in range(60)))
        assert admitted == 20  # 2000 / 100: every token once, none twice
        assert await replicas[0].status(alice) == {name: 0, cluster: 10**9 - 2_000}
