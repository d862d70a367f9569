"""The reset scheduler: driven ticks, a driven clock, and a PostgreSQL outage in between."""

from __future__ import annotations

import asyncio
from typing import Any

from lcore_quota.quota import Quota
from lcore_quota.scheduler import Scheduler

from lcore_core import AuthTuple, QuotaTicket, Usage

from .conftest import PG, Clock, limiter, quota_settings

ALICE = AuthTuple("alice", "alice")
STEP_TIMEOUT_S = 30


class Ticks:
    """An injected `sleep`: the scheduler loop waits in it until the test lets it go on."""

    def __init__(self) -> None:
        self.slept: asyncio.Queue[float] = asyncio.Queue()
        self.go: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        await self.slept.put(seconds)
        await self.go.get()

    async def tick_done(self) -> float:
        return await asyncio.wait_for(self.slept.get(), STEP_TIMEOUT_S)

    async def next_tick(self) -> float:
        self.go.put_nowait(None)
        return await self.tick_done()


async def spend(quota: Quota, tokens: int) -> None:
    ticket = QuotaTicket("q", "/v2/query")
    await quota.check(ALICE, ticket)
    await quota.consume(ALICE, Usage(tokens, 0), ticket)


async def test_loop_resets_each_period_once(storage: Any, make_quota: Any,
                                            clock: Clock) -> None:
    quota = await make_quota(quota_settings(storage, [limiter("minute", initial=500,
                                                              period="1 minute")]))
    ticks = Ticks()
    scheduler = Scheduler(quota, 7, sleep=ticks.sleep)
    scheduler.start()
    try:
        assert await ticks.tick_done() == 7  # the first tick runs at once, then it sleeps 7 s
        await spend(quota, 400)
        clock.advance(seconds=30)
        await ticks.next_tick()
        assert await quota.status("alice") == {"minute": 100}  # the same minute: kept
        clock.advance(seconds=30)
        await ticks.next_tick()
        assert await quota.status("alice") == {"minute": 500}
        await spend(quota, 400)
        await ticks.next_tick()  # still that minute: never a second reset
        assert await quota.status("alice") == {"minute": 100}
        assert (scheduler.ticks, scheduler.failures) == (4, 0)
    finally:
        await scheduler.stop()
    assert scheduler.task is None


async def test_scheduler_survives_a_postgresql_outage(make_quota: Any, clock: Clock,
                                                      pg_namespace: str, proxy: Any) -> None:
    storage = {"postgres": {**PG, "port": proxy.port, "namespace": pg_namespace,
                            "max_connections": 4}}
    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=500)]))
    await spend(quota, 450)
    ticks = Ticks()
    scheduler = Scheduler(quota, 1, sleep=ticks.sleep)
    scheduler.start()
    try:
        await ticks.tick_done()
        await proxy.cut()  # PostgreSQL goes down ...
        clock.advance(days=1)
        await ticks.next_tick()
        await ticks.next_tick()
        assert scheduler.failures == 2
        assert scheduler.task is not None and not scheduler.task.done()
        await proxy.start()  # ... and comes back on the same address
        await ticks.next_tick()
        assert scheduler.failures == 2  # reconnected on the first tick after
        assert await quota.status("alice") == {"daily": 500}  # the missed reset was applied
    finally:
        await scheduler.stop()


async def test_scheduler_sets_up_a_database_that_was_down_at_start(
        clock: Clock, pg_namespace: str, proxy: Any) -> None:
    storage = {"postgres": {**PG, "port": proxy.port, "namespace": pg_namespace,
                            "max_connections": 4}}
    await proxy.cut()
    quota = Quota(quota_settings(storage, [limiter("c", "cluster_limiter", initial=9)]),
                  clock=clock)
    assert await quota.setup(attempts=1) is False
    ticks = Ticks()
    scheduler = Scheduler(quota, 1, sleep=ticks.sleep)
    scheduler.start()
    try:
        await ticks.tick_done()
        assert scheduler.failures == 1
        await proxy.start()
        await ticks.next_tick()
        assert scheduler.failures == 1 and quota.store.ready
        assert await quota.status("anyone") == {"c": 9}
    finally:
        await scheduler.stop()
        await quota.close()
