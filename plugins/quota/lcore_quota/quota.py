"""The quota service: reserve before the LLM call, settle after it, report what is left."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from lcore_core import BackendUnavailable, QuotaExceeded
from lcore_quota.store import Hold, Limiter, QuotaDatabaseError, QuotaStore, Refused

if TYPE_CHECKING:
    from lcore_core import AuthTuple, QuotaTicket, Storage, Usage
    from lcore_quota.metrics import QuotaMetrics

log = logging.getLogger("lcore.quota")
TICKET_KEY = "lcore-quota"
SETTLED_KEY = "lcore-quota.settled"
T = TypeVar("T")
Clock = Callable[[], dt.datetime]


# `lcore_quota_status` is given no ticket: the task that checked a query keeps it here, so that
# the status asked right after the consume can answer from what the settlement returned. Only in
# that task (the request's): a task started from it inherits the context, not the query.
_checked: ContextVar[tuple[asyncio.Task[Any] | None, QuotaTicket] | None] = ContextVar(
    "lcore_quota_checked", default=None)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class LimiterState:
    """What one limiter leaves a caller: for the response, the headers and the CLI."""

    limiter: Limiter
    subject_id: str
    quota_limit: int
    available: int
    resets_at: dt.datetime
    revoked_at: dt.datetime | None = None


class Quota:
    """Token budgets of the configured limiters, shared through the quota database.

    `clock` returns the current time (aware UTC); tests drive it. A database failure denies the
    request with 503 (quota fails closed).
    """

    def __init__(self, settings: Any, *, clock: Clock = utcnow,
                 metrics: QuotaMetrics | None = None, storage: Storage | None = None) -> None:
        self.settings = settings
        self.limiters = [Limiter.from_settings(s) for s in settings["limiters"]]
        # On the runtime's storage when given (a place shared with other stores shares its
        # connections and `max_connections`); else a Database of its own.
        self.store = QuotaStore(settings, storage=storage)
        self.clock = clock
        self.metrics = metrics
        self.history = bool(settings["enable_token_history"])
        self.reservation_tokens = int(settings["reservation_tokens"])
        self.chars_per_token = int(settings["reservation_chars_per_token"])

    @staticmethod
    async def _async(call: Awaitable[T]) -> T:
        try:
            return await call
        except QuotaDatabaseError as exc:
            raise BackendUnavailable("Quota database unavailable", str(exc),
                                     private=True) from exc

    def limiter(self, name: str) -> Limiter:
        for lim in self.limiters:
            if lim.name == name:
                return lim
        raise KeyError(name)

    # --- the request path -------------------------------------------------------------------

    def estimate(self, query: str) -> int:
        """Tokens to reserve for a query: the configured allowance plus the prompt's size."""
        prompt = math.ceil(len(query) / self.chars_per_token) if self.chars_per_token else 0
        return self.reservation_tokens + prompt

    @staticmethod
    def _share(limiter: Limiter, estimate: int) -> int:
        # Never ask a limiter for more than its whole budget, or a small quota could never
        # serve a query; the settlement charges the real usage anyway.
        cap = limiter.initial_quota or limiter.quota_increase
        return min(estimate, cap) if cap else estimate

    async def check(self, auth: AuthTuple, ticket: QuotaTicket) -> None:
        """Reserve the estimate on every limiter at once, or raise `QuotaExceeded` (429)."""
        if not self.limiters:
            return
        _checked.set((asyncio.current_task(), ticket))
        estimate = self.estimate(ticket.query)
        wanted = [(lim, lim.subject(auth.user_id), self._share(lim, estimate))
                  for lim in self.limiters]
        now = self.clock()
        try:
            holds = await self._async(self.store.reserve(wanted, now))
        except Refused as refused:
            log.info("quota exceeded: user %s refused by %s %r (%d available, %d needed)",
                     auth.user_id, refused.limiter.type, refused.limiter.name,
                     refused.available, refused.needed)
            if self.metrics:
                self.metrics.refused.labels(refused.limiter.name).inc()
            raise self._exceeded(auth, refused, now) from None
        ticket.reservations[TICKET_KEY] = holds

    def _exceeded(self, auth: AuthTuple, refused: Refused, now: dt.datetime) -> QuotaExceeded:
        lim = refused.limiter
        resets = lim.period.next_start(now)
        # Upstream's cause, then which limiter refused and when it resets.
        who = "Cluster" if lim.is_cluster else f"User {auth.user_id}"
        return QuotaExceeded(
            "The quota has been exceeded",
            f"{who} has {max(refused.available, 0)} tokens, but {refused.needed} tokens are "
            f"needed ({lim.type} {lim.name!r} resets at {iso(resets)})",
            headers={"Retry-After": str(max(math.ceil((resets - now).total_seconds()), 1))},
            extra={"limiter": lim.name, "limiter_type": lim.type,
                   "available": refused.available, "needed": refused.needed,
                   "resets_at": iso(resets)})

    async def consume(self, auth: AuthTuple, usage: Usage, ticket: QuotaTicket) -> None:
        """Settle the reservation to `usage` (refund the rest, or charge the excess)."""
        holds: list[Hold] = ticket.reservations.pop(TICKET_KEY, None) or []
        if not self.limiters:
            return
        fresh = not holds
        if fresh:  # a call this plugin did not reserve for: charge it all the same
            holds = [Hold(lim.name, lim.subject_type, lim.subject(auth.user_id), 0, -1)
                     for lim in self.limiters]
        history = None
        if self.history:
            history = {"user_id": auth.user_id, "provider": usage.provider,
                       "model": usage.model, "input_tokens": usage.input_tokens,
                       "output_tokens": usage.output_tokens}
        try:
            if fresh:
                await self._async(self.store.ensure_rows(self.limiters, auth.user_id,
                                                         self.clock()))
            rows = await self._async(self.store.settle(holds, usage.total, self.clock(),
                                                       history))
        except BackendUnavailable as exc:
            # The answer is already given: the reservation stays charged as the best estimate.
            log.error("quota settlement failed; the reservation stays charged: %s", exc.cause)
            return
        if all(lim.name in rows for lim in self.limiters):
            ticket.reservations[SETTLED_KEY] = (auth.user_id,
                                                self._states(auth.user_id, rows))
        if self.metrics:
            for hold in holds:
                self.metrics.consumed.labels(hold.limiter, _subject_label(hold.subject_type)
                                             ).inc(usage.total)

    async def release(self, ticket: QuotaTicket) -> None:
        """Refund the whole reservation (the call failed or was cut)."""
        holds: list[Hold] = ticket.reservations.pop(TICKET_KEY, None) or []
        if holds:
            await self._async(self.store.settle(holds, 0, self.clock()))

    async def read_states(self, user_id: str) -> list[LimiterState]:
        """Every limiter's budget for `user_id` (a limiter not used yet has its full quota).

        For the CLI: raises `QuotaDatabaseError`.
        """
        return self._states(user_id, await self.store.available(self.limiters, user_id))

    def _states(self, user_id: str, rows: dict[str, Any]) -> list[LimiterState]:
        now = self.clock()
        states = []
        for lim in self.limiters:
            row = rows.get(lim.name)
            states.append(LimiterState(
                lim, lim.subject(user_id),
                row["quota_limit"] if row else lim.initial_quota,
                row["available"] if row else lim.initial_quota,
                lim.period.next_start(now), _aware(row["revoked_at"]) if row else None))
        return states

    async def states(self, user_id: str) -> list[LimiterState]:
        return await self._async(self.read_states(user_id))

    async def status(self, user_id: str) -> dict[str, int]:
        return {s.limiter.name: s.available for s in await self.states(user_id)}

    def settled_states(self, user_id: str) -> list[LimiterState] | None:
        """The budgets of `user_id` as the settlement of the query this task checked left
        them (what its statement returned), or None when this task settled none.

        For the answer to that query and its headers, which then read nothing again.
        """
        checked = _checked.get()
        if checked is None or checked[0] is not asyncio.current_task():
            return None
        settled = checked[1].reservations.get(SETTLED_KEY)
        return settled[1] if settled is not None and settled[0] == user_id else None

    async def latest_states(self, user_id: str) -> list[LimiterState]:
        """`settled_states` when there are, else `states`."""
        settled = self.settled_states(user_id)
        return settled if settled is not None else await self.states(user_id)

    async def ready(self) -> None:
        await self._async(self.store.ping())

    # --- administration (what `lcore quota` does, for async callers) ---------------------------

    async def set_available(self, limiter: str, subject_id: str, tokens: int, *,
                            revoke: bool = False) -> None:
        """Overwrite `limiter`'s available tokens for `subject_id` until its next reset
        (`revoke`: 0, and the time recorded)."""
        await self._async(self.store.set_available(self.limiter(limiter), subject_id, tokens,
                                                   self.clock(), revoke=revoke))

    async def increase(self, limiter: str, subject_id: str, tokens: int) -> None:
        """Add `tokens` to `limiter`'s available tokens for `subject_id`."""
        await self._async(self.store.increase(self.limiter(limiter), subject_id, tokens,
                                              self.clock()))

    async def usage_totals(self, user_id: str) -> list[dict[str, Any]]:
        """`user_id`'s token history summed per (provider, model)."""
        return await self._async(self.store.usage_totals(user_id))

    # --- lifecycle and the scheduler's work ------------------------------------------------------

    async def setup(self, attempts: int = 1, delay_s: float = 1.0) -> bool:
        """Create the tables, retrying `attempts` times; False when the database stayed down
        (requests then answer 503 until it is back; the scheduler keeps trying)."""
        for attempt in range(attempts):
            try:
                await self._async(self.store.setup())
                now = self.clock()
                await self._async(self.store.ensure_rows(
                    [lim for lim in self.limiters if lim.is_cluster], "", now))
                return True
            except BackendUnavailable as exc:
                log.warning("quota database not available (attempt %d of %d): %s",
                            attempt + 1, attempts, exc.cause)
                if attempt + 1 < attempts:
                    await asyncio.sleep(delay_s)
        return False

    async def apply_periods(self) -> int:
        """Apply the current period of every limiter; the rows changed. Raises on DB errors."""
        now = self.clock()
        changed = 0
        for lim in self.limiters:
            changed += await self._async(self.store.apply_period(lim, now))
        return changed

    async def refresh_metrics(self) -> None:
        if self.metrics is None:
            return
        for limiter, subject_type, subjects, available in await self._async(
                self.store.summary()):
            label = _subject_label(subject_type)
            self.metrics.available.labels(limiter, label).set(available or 0)
            self.metrics.subjects.labels(limiter, label).set(subjects)

    async def close(self) -> None:
        await self.store.close()


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(tzinfo=dt.UTC) if value is not None else None


def _subject_label(subject_type: str) -> str:
    return "cluster" if subject_type == "c" else "user"
