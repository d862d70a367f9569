"""Reserve, settle, release, reset: the quota service on real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from lcore_quota.quota import TICKET_KEY, Quota

from lcore_core import AuthTuple, BackendUnavailable, QuotaExceeded, QuotaTicket, Usage

from .conftest import Clock, limiter, quota_settings

ALICE = AuthTuple("alice", "alice")
BOB = AuthTuple("bob", "bob")


def ticket(query: str = "q") -> QuotaTicket:
    return QuotaTicket(query=query, endpoint="/v2/query")


def usage(input_tokens: int, output_tokens: int) -> Usage:
    return Usage(input_tokens, output_tokens, "openai", "scripted-llm")


async def spend(quota: Any, auth: AuthTuple, tokens: int) -> None:
    t = ticket()
    await quota.check(auth, t)
    await quota.consume(auth, usage(tokens, 0), t)


async def test_reserve_then_settle_to_the_real_usage(storage: Any, make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=1000)]))
    t = ticket()
    await quota.check(ALICE, t)
    [hold] = t.reservations[TICKET_KEY]
    assert (hold.limiter, hold.subject_id, hold.tokens) == ("daily", "alice", 100)
    assert await quota.status("alice") == {"daily": 900}  # the estimate is held meanwhile
    await quota.consume(ALICE, usage(30, 12), t)
    assert TICKET_KEY not in t.reservations
    assert await quota.status("alice") == {"daily": 958}
    assert await quota.status("bob") == {"daily": 1000}  # budgets are per user


async def test_usage_above_the_estimate_is_charged(storage: Any, make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=1000)]))
    await spend(quota, ALICE, 350)
    assert await quota.status("alice") == {"daily": 650}


async def test_release_refunds_everything(storage: Any, make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=1000)]))
    t = ticket()
    await quota.check(ALICE, t)
    await quota.release(t)
    await quota.release(t)  # a second release finds nothing left to refund
    assert await quota.status("alice") == {"daily": 1000}


async def test_estimate_counts_the_prompt(storage: Any, make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=1000)],
                                            reservation_tokens=10,
                                            reservation_chars_per_token=4))
    t = ticket("x" * 41)
    await quota.check(ALICE, t)
    assert t.reservations[TICKET_KEY][0].tokens == 10 + 11


async def test_exhaustion_is_a_429_naming_the_limiter_and_its_reset(storage: Any,
                                                                     make_quota: Any,
                                                                     clock: Clock) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=250)]))
    await spend(quota, ALICE, 100)
    await spend(quota, ALICE, 100)
    with pytest.raises(QuotaExceeded) as caught:
        await quota.check(ALICE, ticket())
    error = caught.value
    assert error.status == 429
    detail = error.body()["detail"]
    assert detail["response"] == "The quota has been exceeded"
    assert detail["limiter"] == "daily" and detail["limiter_type"] == "user_limiter"
    assert (detail["available"], detail["needed"]) == (50, 100)
    assert detail["resets_at"] == "2025-01-16T00:00:00Z"
    assert "'daily'" in detail["cause"] and "User alice has" in detail["cause"]
    assert error.headers["Retry-After"] == str(12 * 3600)
    await quota.check(BOB, ticket())  # another user is not affected


async def test_the_strictest_limiter_refuses_and_nothing_is_held(storage: Any,
                                                                 make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [
        limiter("user-daily", initial=10_000),
        limiter("cluster-daily", "cluster_limiter", initial=350)]))
    await spend(quota, ALICE, 150)
    await spend(quota, BOB, 150)
    assert await quota.status("alice") == {"user-daily": 9850, "cluster-daily": 50}
    with pytest.raises(QuotaExceeded) as caught:
        await quota.check(BOB, ticket())
    assert caught.value.extra["limiter"] == "cluster-daily"
    assert caught.value.cause.startswith("Cluster has 50 tokens, but 100 tokens are needed")
    # All or nothing: the user limiter's reservation was rolled back with the refusal.
    assert await quota.status("bob") == {"user-daily": 9850, "cluster-daily": 50}


async def test_a_small_quota_still_serves_one_query(storage: Any, make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("tiny", initial=40)]))
    await spend(quota, ALICE, 25)  # the estimate (100) is capped at the whole budget
    assert await quota.status("alice") == {"tiny": 15}
    with pytest.raises(QuotaExceeded):
        await quota.check(ALICE, ticket())


async def test_period_reset_is_applied_once_per_period(storage: Any, make_quota: Any,
                                                       clock: Clock) -> None:
    settings = quota_settings(storage, [limiter("daily", initial=300),
                                        limiter("topup", initial=500, increase=50,
                                                period="1 hour")])
    first, second = await make_quota(settings), await make_quota(settings)  # two replicas
    await spend(first, ALICE, 280)
    assert await first.status("alice") == {"daily": 20, "topup": 220}
    assert await first.apply_periods() == 0  # nothing before the period ends
    clock.advance(minutes=59)
    assert await first.apply_periods() == 0
    clock.advance(minutes=1)  # 13:00: a new hour, the same day
    assert await first.apply_periods() == 1
    assert await second.apply_periods() == 0  # the other replica finds it done
    assert await first.status("alice") == {"daily": 20, "topup": 270}
    clock.advance(hours=11)  # midnight: both limiters' periods turn
    results = await asyncio.gather(first.apply_periods(), second.apply_periods())
    assert sum(results) == 2  # each row once, whichever replica got there first
    assert await second.status("alice") == {"daily": 300, "topup": 320}


async def test_reservation_across_a_reset_is_not_refunded_into_the_new_period(
        storage: Any, make_quota: Any, clock: Clock) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=300)]))
    t = ticket()
    await quota.check(ALICE, t)  # 100 held at 23:59:59
    clock.advance(hours=11, minutes=59, seconds=59)
    clock.advance(seconds=1)
    assert await quota.apply_periods() == 1  # the new day starts at 300
    await quota.consume(ALICE, usage(40, 0), t)
    assert await quota.status("alice") == {"daily": 260}


async def test_revoke_set_and_increase(storage: Any, make_quota: Any, clock: Clock) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=300)]))
    daily = quota.limiter("daily")
    await quota.store.set_available(daily, "alice", 0, clock(), revoke=True)
    [state] = await quota.states("alice")
    assert state.available == 0 and state.revoked_at == clock()
    with pytest.raises(QuotaExceeded):
        await quota.check(ALICE, ticket())
    await quota.store.increase(daily, "alice", 120, clock())
    assert await quota.status("alice") == {"daily": 120}
    await quota.store.set_available(daily, "alice", 5000, clock())
    [state] = await quota.states("alice")
    assert (state.available, state.revoked_at, state.quota_limit) == (5000, None, 300)
    clock.advance(days=1)
    await quota.apply_periods()  # a revocation or a grant lasts until the next reset
    assert await quota.status("alice") == {"daily": 300}


async def test_token_history_per_user_provider_model(storage: Any, make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=10_000)],
                                            enable_token_history=True))
    for tokens in (10, 20):
        t = ticket()
        await quota.check(ALICE, t)
        await quota.consume(ALICE, usage(tokens, tokens + 1), t)
    t = ticket()
    await quota.check(ALICE, t)
    await quota.release(t)  # a failed call leaves no history
    [row] = await quota.store.usage_totals("alice")
    assert (row["provider"], row["model"], row["input_tokens"], row["output_tokens"],
            row["calls"]) == ("openai", "scripted-llm", 30, 32, 2)
    assert await quota.store.usage_totals("bob") == []


async def test_history_off_by_default(storage: Any, make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=10_000)]))
    await spend(quota, ALICE, 10)
    assert await quota.store.usage_totals("alice") == []


async def test_200_concurrent_requests_consume_exactly(storage: Any, make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [
        limiter("user", initial=1_000_000),
        limiter("cluster", "cluster_limiter", initial=10_000_000)]))

    async def one(index: int) -> int:
        t = ticket()
        await quota.check(ALICE, t)
        if index % 5 == 0:  # every fifth call "fails" and is refunded
            await quota.release(t)
            return 0
        spent = 50 + index  # some below the estimate of 100, some above
        await quota.consume(ALICE, usage(spent - 7, 7), t)
        return spent

    spent = sum(await asyncio.gather(*(one(i) for i in range(200))))
    assert await quota.status("alice") == {"user": 1_000_000 - spent,
                                           "cluster": 10_000_000 - spent}


async def test_200_concurrent_requests_never_overdraw(storage: Any, make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("user", initial=2_000)]))
    admitted = 0

    async def one() -> None:
        nonlocal admitted
        t = ticket()
        try:
            await quota.check(ALICE, t)
        except QuotaExceeded:
            return
        admitted += 1
        await asyncio.sleep(0)
        await quota.consume(ALICE, usage(100, 0), t)  # exactly the estimate

    await asyncio.gather(*(one() for _ in range(200)))
    assert admitted == 20  # 2000 / 100: every token once, none twice
    assert await quota.status("alice") == {"user": 0}


async def test_database_failure_denies_with_503(make_quota: Any, pg_namespace: str,
                                                proxy: Any) -> None:
    from .conftest import PG

    quota = await make_quota(quota_settings(
        {"postgres": {**PG, "port": proxy.port, "namespace": pg_namespace,
                      "max_connections": 4}}, [limiter("daily", initial=1000)]))
    await spend(quota, ALICE, 10)
    await proxy.cut()
    with pytest.raises(BackendUnavailable) as caught:
        await quota.check(ALICE, ticket())
    assert caught.value.status == 503
    assert caught.value.response == "Quota database unavailable"
    assert f"127.0.0.1:{proxy.port}/test" in caught.value.cause
    await proxy.start()
    await spend(quota, ALICE, 10)
    assert await quota.status("alice") == {"daily": 980}


async def test_consume_without_a_reservation_charges_the_usage(storage: Any,
                                                               make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=1000)]))
    await quota.consume(ALICE, usage(30, 5), ticket())
    assert await quota.status("alice") == {"daily": 965}


async def test_the_first_refusing_limiter_in_the_configuration_is_named(
        storage: Any, make_quota: Any) -> None:
    # "zeta" comes first in the configuration, last in key order (PostgreSQL locks by key).
    quota = await make_quota(quota_settings(storage, [limiter("zeta", initial=100),
                                                      limiter("alpha", initial=100)]))
    await spend(quota, ALICE, 100)
    with pytest.raises(QuotaExceeded) as caught:
        await quota.check(ALICE, ticket())
    assert (caught.value.extra["limiter"], caught.value.extra["available"]) == ("zeta", 0)


async def test_replicas_listing_limiters_in_other_orders_never_deadlock(
        pg_namespace: str, make_quota: Any) -> None:
    from .conftest import PG

    storage = {"postgres": {**PG, "namespace": pg_namespace, "max_connections": 8}}
    user = limiter("user", initial=1_000_000)
    cluster = limiter("cluster", "cluster_limiter", initial=5_000_000)
    replicas = [await make_quota(quota_settings(storage, order, enable_token_history=True))
                for order in ([user, cluster], [cluster, user])]

    async def one(index: int) -> int:
        quota = replicas[index % 2]
        t = ticket()
        await quota.check(ALICE, t)
        await quota.consume(ALICE, usage(index, 1), t)
        return index + 1

    spent = sum(await asyncio.gather(*(one(i) for i in range(200))))
    assert await replicas[0].status("alice") == {"user": 1_000_000 - spent,
                                                 "cluster": 5_000_000 - spent}
    [row] = await replicas[0].store.usage_totals("alice")
    assert row["calls"] == 200 and row["input_tokens"] + row["output_tokens"] == spent


async def test_one_statement_each_to_reserve_and_settle_on_postgres(
        pg_namespace: str, make_quota: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from lcore_quota.plugin import lcore_quota_status
    from lcore_quota.web import STATE_KEY

    from .conftest import PG

    quota = await make_quota(quota_settings(
        {"postgres": {**PG, "namespace": pg_namespace, "max_connections": 4}},
        [limiter("daily", initial=1000), limiter("cluster", "cluster_limiter", initial=5000)],
        enable_token_history=True))
    await spend(quota, ALICE, 10)  # the rows exist from now on
    sent: list[str] = []
    # Every statement runs on the event loop (psycopg 3): all are counted here.
    execute = psycopg.AsyncConnection.execute

    async def counted(conn: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(sql.split()[0])
        return await execute(conn, sql, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", counted)
    t = ticket()
    await quota.check(ALICE, t)
    assert sent == ["WITH"]  # no BEGIN, no COMMIT: one statement in autocommit
    await quota.consume(ALICE, usage(20, 5), t)
    assert sent == ["WITH", "WITH"]  # the history row included
    runtime = type("Runtime", (), {"state": {STATE_KEY: quota}})()
    # The answer's figures come from the settlement: nothing more is read.
    assert await lcore_quota_status(ALICE, runtime) == {"daily": 965, "cluster": 4965}
    assert sent == ["WITH", "WITH"]
    assert (await quota.store.usage_totals("alice"))[0]["calls"] == 2


async def test_settled_figures_serve_only_the_task_that_settled(storage: Any,
                                                                make_quota: Any) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=1000)]))
    assert quota.settled_states("alice") is None
    t = ticket()
    await quota.check(ALICE, t)
    assert quota.settled_states("alice") is None  # held, not settled yet
    await quota.consume(ALICE, usage(30, 0), t)
    [state] = quota.settled_states("alice") or []
    assert (state.available, state.quota_limit) == (970, 1000)
    assert await quota.states("alice") == [state]
    assert quota.settled_states("bob") is None
    # Another request's task inherits this context, never these figures.
    assert await asyncio.create_task(_settled(quota, "alice")) is None
    await quota.check(ALICE, ticket())  # the next query of this task: nothing settled yet
    assert quota.settled_states("alice") is None
    assert await quota.latest_states("alice") == await quota.states("alice")


async def _settled(quota: Any, user_id: str) -> Any:
    return quota.settled_states(user_id)


async def test_quota_shares_the_place_and_its_max_connections(pg_namespace: str) -> None:
    """On the runtime's storage the quota uses the Database of its place (shared with any
    store configured there), and never opens more sessions than `max_connections`."""
    from lcore_core import Storage

    from .conftest import PG, pg_connect

    name = f"lcore-quota-{pg_namespace[-12:]}"
    section = {"postgres": {**PG, "namespace": pg_namespace, "max_connections": 2,
                            "application_name": name}}
    storage = Storage()
    quota = Quota(quota_settings(section, [limiter("daily", initial=10**9)]), storage=storage)
    try:
        assert quota.store.db is storage.database(section, where="database")
        assert await quota.setup()
        peak = 0

        async def one(index: int) -> None:
            await spend(quota, AuthTuple(f"u{index % 7}", "x"), 10)

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, await asyncio.to_thread(_sessions, name, pg_connect))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(one(i) for i in range(60)))
        watcher.cancel()
        assert 1 <= peak <= 2
        left = [(await quota.status(f"u{i}"))["daily"] for i in range(7)]
        assert sum(left) == 7 * 10**9 - 600
    finally:
        await quota.close()
        await storage.close()


def _sessions(name: str, connect: Any) -> int:
    conn = connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (name,))
            return int(cursor.fetchone()[0])
    finally:
        conn.close()
