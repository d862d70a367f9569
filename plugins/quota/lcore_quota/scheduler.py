"""The background task that resets or tops up quotas once per limiter period."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from lcore_core import LCoreError
from lcore_quota.quota import Quota

log = logging.getLogger("lcore.quota.scheduler")


class Scheduler:
    """Every `period_s` seconds, applies each limiter's current period (idempotent SQL).

    A failing database is logged and tried again at the next tick: the task never dies of it.
    `sleep` is injectable so tests drive the ticks without waiting.
    """

    def __init__(self, quota: Quota, period_s: float, *,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.quota = quota
        self.period_s = period_s
        self.sleep = sleep
        self.task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.failures = 0

    async def tick(self) -> bool:
        """One round over the limiters; True when it reached the database."""
        self.ticks += 1
        try:
            if not self.quota.store.ready:
                await self.quota.setup()
            changed = await self.quota.apply_periods()
            await self.quota.refresh_metrics()
        except LCoreError as exc:
            self.failures += 1
            log.error("quota scheduler: database error, retrying next tick: %s", exc.cause)
            return False
        if changed:
            log.info("quota scheduler: %d quota rows reset or increased", changed)
        return True

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug must not stop the quota resets for good
                self.failures += 1
                log.exception("quota scheduler: unexpected error")
            await self.sleep(self.period_s)

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop(),
                                                               name="lcore-quota-scheduler")

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
