"""Quota state in SQLite or PostgreSQL, on the storage service (`lcore_core.storage`).

Every change of a budget is one SQL `UPDATE` computed by the database (`available = available -
:n`), never a value read into Python and written back, so any number of tasks and LCore
processes sharing the database add up exactly. A reservation takes tokens only where the row,
locked, has `available >= :n`: it cannot overdraw, however many requests race for the last
tokens.

On PostgreSQL a reservation and a settlement (with its history row) are each one statement in
autocommit, one round trip on the event loop: a `SELECT ... ORDER BY <key> FOR UPDATE` in a CTE
locks the rows in key order (one order for every statement and every configuration: no
deadlock), then they are updated together. SQLite, with one writer at a time, runs the same
steps row by row in one transaction.

Tables (in `postgres.namespace` on PostgreSQL), the same ones earlier LCore (peewee) created:

- `lcore_quota_limit`: one row per (limiter, subject type `u`/`c`, subject id; `""` for the
  cluster) with `quota_limit`, `available`, `epoch` (bumped whenever `available` is overwritten,
  so a reservation made before a reset is not refunded into the new period), `reset_at` (start of
  the last period applied), `updated_at` and `revoked_at`.
- `lcore_quota_token_usage`: one row per successful LLM call (user, provider, model, input and
  output tokens, time) when `enable_token_history` is on; `origin` is NULL for those, `upstream`
  for the totals `lcore migrate --from-upstream` carried over from upstream's `token_usage`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lcore_core import Database, Storage, StorageError, Transaction, as_datetime
from lcore_quota.config import CLUSTER_LIMITER, SUBJECT_TYPES
from lcore_quota.periods import Period

SCHEMA_VERSION = 2  # 2: lcore_quota_token_usage.origin
COMPONENT = "quota"
LIMIT_TABLE = "lcore_quota_limit"
USAGE_TABLE = "lcore_quota_token_usage"
CLUSTER_SUBJECT = ""
# The largest token count a quota column (64-bit signed) holds.
MAX_TOKENS = 2**63 - 1
RESERVE_ATTEMPTS = 3
KEY = "limiter = %s AND subject_type = %s AND subject_id = %s"
LIMIT_COLUMNS = ("limiter, subject_type, subject_id, quota_limit, available, epoch, reset_at, "
                 "updated_at, revoked_at")


class QuotaDatabaseError(Exception):
    """The quota database failed; `where` names it (path or host:port/db)."""

    def __init__(self, where: str, error: BaseException) -> None:
        self.where = where
        self.error = error
        detail = getattr(error, "cause", None) or str(error)
        super().__init__(f"{where}: {type(error).__name__}: {str(detail).strip()}")


@dataclass(frozen=True)
class Limiter:
    """One configured limiter."""

    name: str
    type: str
    initial_quota: int
    quota_increase: int
    period: Period

    @classmethod
    def from_settings(cls, settings: Any) -> Limiter:
        return cls(settings["name"], settings["type"], settings["initial_quota"],
                   settings["quota_increase"], Period.parse(settings["period"]))

    @property
    def subject_type(self) -> str:
        return SUBJECT_TYPES[self.type]

    @property
    def is_cluster(self) -> bool:
        return self.type == CLUSTER_LIMITER

    def subject(self, user_id: str) -> str:
        return CLUSTER_SUBJECT if self.is_cluster else user_id


@dataclass(frozen=True)
class Hold:
    """Tokens reserved on one limiter's row; `epoch` is the row's epoch when they were taken."""

    limiter: str
    subject_type: str
    subject_id: str
    tokens: int
    epoch: int


class Refused(Exception):
    """A reservation did not fit in `limiter`'s available tokens; nothing was reserved."""

    def __init__(self, limiter: Limiter, available: int, needed: int) -> None:
        super().__init__(limiter.name)
        self.limiter = limiter
        self.available = available
        self.needed = needed


def _naive(moment: dt.datetime) -> dt.datetime:
    """UTC without tzinfo, as stored (SQLite has no time zones)."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def migrations(db: Database) -> list[tuple[int, list[Any]]]:
    """The quota tables, as earlier LCore (peewee) created them, so those open in place."""
    pg = db.kind == "postgres"
    ts = db.timestamp
    serial = "BIGSERIAL NOT NULL PRIMARY KEY" if pg else "INTEGER NOT NULL PRIMARY KEY"
    return [
        (1, [f'CREATE TABLE IF NOT EXISTS "{LIMIT_TABLE}" ('
             '"limiter" TEXT NOT NULL, "subject_type" VARCHAR(1) NOT NULL, '
             '"subject_id" TEXT NOT NULL, "quota_limit" BIGINT NOT NULL, '
             '"available" BIGINT NOT NULL, "epoch" INTEGER NOT NULL, '
             f'"reset_at" {ts} NOT NULL, "updated_at" {ts} NOT NULL, "revoked_at" {ts}, '
             'PRIMARY KEY ("limiter", "subject_type", "subject_id"))',
             f'CREATE TABLE IF NOT EXISTS "{USAGE_TABLE}" ('
             f'"id" {serial}, "user_id" TEXT NOT NULL, "provider" TEXT NOT NULL, '
             '"model" TEXT NOT NULL, "input_tokens" BIGINT NOT NULL, '
             f'"output_tokens" BIGINT NOT NULL, "created_at" {ts} NOT NULL)',
             f'CREATE INDEX IF NOT EXISTS "{USAGE_TABLE}_user_id_created_at" '
             f'ON "{USAGE_TABLE}" ("user_id", "created_at")']),
        (2, [lambda tx: tx.add_column(USAGE_TABLE, "origin", "TEXT")]),
    ]


def open_database(settings: Any, storage: Storage | None = None) -> tuple[Database, str]:
    """The Database of a validated `quota_handlers` section (the runtime's, shared with the
    stores on the same place, when `storage` is given) and its description."""
    database = (storage or Storage()).database(settings, where="quota_handlers",
                                               default_path=None)
    s = database.settings
    where = (f"PostgreSQL {s.host}:{s.port}/{s.db}" if database.kind == "postgres"
             else f"SQLite {s.path}")
    return database, where


def _row(row: dict[str, Any]) -> dict[str, Any]:
    for column in ("reset_at", "updated_at", "revoked_at"):
        if row.get(column) is not None:
            row[column] = as_datetime(row[column])
    return row


class QuotaStore:
    """The quota tables of one database."""

    def __init__(self, settings: Any, *, storage: Storage | None = None) -> None:
        self.db, self.where = open_database(settings, storage)
        self.is_postgres = self.db.kind == "postgres"
        self.ready = False
        # A store given no Storage owns its Database and closes it.
        self._owned = storage is None

    # --- plumbing ---------------------------------------------------------------------------

    def _error(self, exc: StorageError) -> QuotaDatabaseError:
        return QuotaDatabaseError(self.where, exc)

    async def _ready(self) -> None:
        if not self.ready:
            await self.setup()

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            await self._ready()
            return await self.db.fetch(sql, params)
        except StorageError as exc:
            raise self._error(exc) from exc

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            await self._ready()
            return await self.db.execute(sql, params)
        except StorageError as exc:
            raise self._error(exc) from exc

    async def setup(self) -> None:
        """Create the schema and tables, or bring those of an earlier version up to date
        (idempotent; replicas may run it side by side)."""
        try:
            await self.db.migrate(COMPONENT, migrations(self.db))
        except StorageError as exc:
            raise self._error(exc) from exc
        self.ready = True

    async def has_tables(self) -> bool:
        """Whether the quota tables exist; creates nothing, not even the SQLite file."""
        if self.ready:
            return True
        try:
            return await self.db.has_table(LIMIT_TABLE)
        except StorageError as exc:
            raise self._error(exc) from exc

    async def close(self) -> None:
        if self._owned:
            await self.db.close()

    async def ping(self) -> None:
        await self.fetch("SELECT 1")

    async def _create_rows(self, tx: Transaction | Database,
                           rows: list[tuple[Limiter, str]], now: dt.datetime) -> None:
        """Give each (limiter, subject) without a row its full quota (one statement).

        In key order: two of these creating the same rows wait for each other in one order.
        """
        rows = sorted(rows, key=lambda row: (row[0].name, row[0].subject_type, row[1]))
        if not rows:
            return
        values: list[Any] = []
        for limiter, subject_id in rows:
            values += [limiter.name, limiter.subject_type, subject_id, limiter.initial_quota,
                       limiter.initial_quota, 0, _naive(limiter.period.start(now)), _naive(now)]
        marks = ", ".join(["(%s, %s, %s, %s::bigint, %s::bigint, %s::int, %s, %s)"
                           if self.is_postgres else "(%s, %s, %s, %s, %s, %s, %s, %s)"]
                          * len(rows))
        await tx.execute(
            f'INSERT INTO "{LIMIT_TABLE}" (limiter, subject_type, subject_id, quota_limit, '
            f"available, epoch, reset_at, updated_at) VALUES {marks} "
            "ON CONFLICT (limiter, subject_type, subject_id) DO NOTHING", values)

    async def _write(self, fn: Any) -> Any:
        """`fn(transaction)` in one transaction; errors become `QuotaDatabaseError`."""
        try:
            await self._ready()
            async with self.db.transaction() as tx:
                return await fn(tx)
        except StorageError as exc:
            raise self._error(exc) from exc

    # --- the request path -----------------------------------------------------------------

    async def _reserve_rows(self, wanted: list[tuple[Limiter, str, int]],
                            now: dt.datetime) -> list[Hold]:
        """`reserve` on SQLite: row by row in one transaction (SQLite's one write lock)."""
        async def take(tx: Transaction) -> list[Hold]:
            holds = []
            for limiter, subject_id, tokens in wanted:
                key = (limiter.name, limiter.subject_type, subject_id)
                need = max(tokens, 1)
                for _ in range(RESERVE_ATTEMPTS):
                    taken = await tx.fetch(
                        f'UPDATE "{LIMIT_TABLE}" SET available = available - %s, '
                        f"updated_at = %s WHERE {KEY} AND available >= %s RETURNING epoch",
                        (tokens, _naive(now), *key, need))
                    if taken:
                        holds.append(Hold(*key, tokens, int(taken[0]["epoch"])))
                        break
                    row = await tx.fetch(f'SELECT available FROM "{LIMIT_TABLE}" WHERE {KEY}',
                                         key)
                    if not row:
                        await self._create_rows(tx, [(limiter, subject_id)], now)
                    elif row[0]["available"] < need:
                        # Raising rolls back the holds already taken on other limiters.
                        raise Refused(limiter, int(row[0]["available"]), need)
                else:
                    raise Refused(limiter, 0, need)
            return holds

        result: list[Hold] = await self._write(take)
        return result

    @staticmethod
    def _reserve_statement(wanted: list[tuple[Limiter, str, int]],
                           now: dt.datetime) -> tuple[str, list[Any]]:
        """`reserve` on PostgreSQL as one statement: its rows are (ord, available, epoch) for
        each wanted row that exists, epoch NULL everywhere when any has too few tokens."""
        values = [(i, limiter.name, limiter.subject_type, subject_id, tokens, max(tokens, 1))
                  for i, (limiter, subject_id, tokens) in enumerate(wanted)]
        # `locked` returns each row as it is once locked (a concurrent change committed in
        # between included), so the check and the update below see the same tokens. The casts
        # type the VALUES, which the server binds.
        row = "(%s::int, %s::text, %s::text, %s::text, %s::bigint, %s::bigint)"
        sql = f"""
            WITH wanted (ord, limiter, subject_type, subject_id, tokens, need) AS (
                VALUES {", ".join([row] * len(values))}),
            locked AS (
                SELECT w.ord, w.tokens, w.need, l.limiter, l.subject_type, l.subject_id,
                       l.available
                FROM "{LIMIT_TABLE}" l JOIN wanted w
                    ON (l.limiter, l.subject_type, l.subject_id)
                       = (w.limiter, w.subject_type, w.subject_id)
                ORDER BY l.limiter, l.subject_type, l.subject_id FOR UPDATE OF l),
            taken AS (
                UPDATE "{LIMIT_TABLE}" l SET available = l.available - k.tokens,
                                             updated_at = %s::timestamp
                FROM locked k
                WHERE (l.limiter, l.subject_type, l.subject_id)
                      = (k.limiter, k.subject_type, k.subject_id)
                  AND (SELECT count(*) FROM locked c WHERE c.available >= c.need) = %s::int
                RETURNING k.ord, l.epoch)
            SELECT k.ord, k.available, t.epoch FROM locked k LEFT JOIN taken t USING (ord)"""
        return sql, [value for row in values for value in row] + [_naive(now), len(values)]

    async def reserve(self, wanted: Iterable[tuple[Limiter, str, int]],
                      now: dt.datetime) -> list[Hold]:
        """Take `tokens` from each (limiter, subject, tokens), all or nothing; raises `Refused`
        naming the first limiter, in the order given, that has too few.

        A limiter needs at least `max(tokens, 1)` available. Rows are locked in one order (see
        the module), so concurrent reservations never wait on each other in a cycle. On
        PostgreSQL one statement (plus one to create rows missing); on SQLite row by row in
        one transaction.
        """
        wanted = list(wanted)
        if not self.is_postgres or not wanted:
            return await self._reserve_rows(wanted, now)
        sql, params = self._reserve_statement(wanted, now)
        missing: list[int] = []
        for _ in range(RESERVE_ATTEMPTS):
            found = {row["ord"]: (row["available"], row["epoch"])
                     for row in await self.fetch(sql, params)}
            missing = [i for i in range(len(wanted)) if i not in found]
            if missing:
                # First use, or rows committed after the statement's snapshot (then the
                # insert does nothing): the next attempt sees them all.
                try:
                    await self._create_rows(self.db, [(wanted[i][0], wanted[i][1])
                                                      for i in missing], now)
                except StorageError as exc:
                    raise self._error(exc) from exc
                continue
            if all(epoch is not None for _, epoch in found.values()):
                return [Hold(limiter.name, limiter.subject_type, subject_id, tokens, found[i][1])
                        for i, (limiter, subject_id, tokens) in enumerate(wanted)]
            for i, (limiter, _, tokens) in enumerate(wanted):
                if found[i][0] < max(tokens, 1):
                    raise Refused(limiter, found[i][0], max(tokens, 1))
        limiter, _, tokens = wanted[missing[0] if missing else 0]
        raise Refused(limiter, 0, max(tokens, 1))

    async def _settle_rows(self, holds: list[Hold], used: int, now: dt.datetime,
                           usage: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
        """`settle` on SQLite, in one transaction."""
        async def apply(tx: Transaction) -> dict[str, dict[str, Any]]:
            rows = {}
            for hold in holds:
                for row in await tx.fetch(
                        f'UPDATE "{LIMIT_TABLE}" SET available = available + CASE WHEN '
                        "epoch = %s THEN %s ELSE 0 END - %s, updated_at = %s "
                        f"WHERE {KEY} RETURNING limiter, quota_limit, available, revoked_at",
                        (hold.epoch, hold.tokens, used, _naive(now), hold.limiter,
                         hold.subject_type, hold.subject_id)):
                    rows[row["limiter"]] = _row(row)
            if usage is not None:
                await self._record(tx, usage, now)
            return rows

        result: dict[str, dict[str, Any]] = await self._write(apply)
        return result

    async def record(self, usage: dict[str, Any], at: dt.datetime, *,
                     origin: str | None = None) -> None:
        """Add one history row (`origin`: where it came from; None for an LLM call)."""
        try:
            await self._ready()
            await self._record(self.db, usage, at, origin)
        except StorageError as exc:
            raise self._error(exc) from exc

    @staticmethod
    async def _record(tx: Transaction | Database, usage: dict[str, Any], now: dt.datetime,
                      origin: str | None = None) -> None:
        await tx.execute(
            f'INSERT INTO "{USAGE_TABLE}" (user_id, provider, model, input_tokens, '
            "output_tokens, created_at, origin) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (usage["user_id"], usage["provider"], usage["model"], usage["input_tokens"],
             usage["output_tokens"], _naive(now), origin))

    @staticmethod
    def _settle_statement(holds: list[Hold], used: int, now: dt.datetime,
                          usage: dict[str, Any] | None) -> tuple[str, list[Any]]:
        """`settle` on PostgreSQL as one statement, the history row in a CTE of its own."""
        values = [(h.limiter, h.subject_type, h.subject_id, h.tokens, h.epoch) for h in holds]
        params: list[Any] = [value for row in values for value in row] + [used, _naive(now)]
        history = ""
        if usage is not None:
            columns = ("user_id", "provider", "model", "input_tokens", "output_tokens")
            history = (f', recorded AS (INSERT INTO "{USAGE_TABLE}" '
                       f"({', '.join(columns)}, created_at) VALUES "
                       "(%s::text, %s::text, %s::text, %s::bigint, %s::bigint, %s::timestamp))")
            params += [usage[column] for column in columns] + [_naive(now)]
        # Locked in key order, as `reserve` locks them, before the update touches any row.
        row = "(%s::text, %s::text, %s::text, %s::bigint, %s::int)"
        sql = f"""
            WITH held (limiter, subject_type, subject_id, tokens, epoch) AS (
                VALUES {", ".join([row] * len(values))}),
            locked AS (
                SELECT h.* FROM "{LIMIT_TABLE}" l JOIN held h
                    ON (l.limiter, l.subject_type, l.subject_id)
                       = (h.limiter, h.subject_type, h.subject_id)
                ORDER BY l.limiter, l.subject_type, l.subject_id FOR UPDATE OF l),
            settled AS (
                UPDATE "{LIMIT_TABLE}" l
                SET available = l.available
                                + CASE WHEN l.epoch = k.epoch THEN k.tokens ELSE 0 END
                                - %s::bigint,
                    updated_at = %s::timestamp
                FROM locked k
                WHERE (l.limiter, l.subject_type, l.subject_id)
                      = (k.limiter, k.subject_type, k.subject_id)
                RETURNING l.limiter, l.quota_limit, l.available, l.revoked_at){history}
            SELECT limiter, quota_limit, available, revoked_at FROM settled"""
        return sql, params

    async def settle(self, holds: Iterable[Hold], used: int, now: dt.datetime,
                     usage: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Give back each hold's tokens and charge `used` (0 for a release), all at once; the
        rows as they are afterwards (`quota_limit`, `available`, `revoked_at`), by limiter.
        One statement on PostgreSQL, one transaction on SQLite.

        A hold taken before the row's budget was overwritten (a reset, `set`, `revoke`: the
        epoch moved on) refunds nothing: that budget is gone; `used` is still charged.
        `usage` (user_id, provider, model, input_tokens, output_tokens) adds a history row.
        """
        holds = list(holds)
        if not self.is_postgres or not holds:
            return await self._settle_rows(holds, used, now, usage)
        rows = await self.fetch(*self._settle_statement(holds, used, now, usage))
        return {row["limiter"]: _row(row) for row in rows}

    async def available(self, limiters: Iterable[Limiter],
                        user_id: str) -> dict[str, Any]:
        """The rows of `user_id` and the cluster for `limiters`, by limiter name (None: no row)."""
        limiters = list(limiters)
        found: dict[str, Any] = dict.fromkeys(lim.name for lim in limiters)
        if not limiters:
            return found
        where = " OR ".join([f"({KEY})"] * len(limiters))
        params = [v for lim in limiters
                  for v in (lim.name, lim.subject_type, lim.subject(user_id))]
        for row in await self.fetch(f'SELECT {LIMIT_COLUMNS} FROM "{LIMIT_TABLE}" '
                                    f"WHERE {where}", params):
            found[row["limiter"]] = _row(row)
        return found

    # --- the scheduler -----------------------------------------------------------------------

    async def apply_period(self, limiter: Limiter, now: dt.datetime) -> int:
        """Reset (or, with `quota_increase`, top up) every row of `limiter` not yet done for the
        period containing `now`; returns the rows changed.

        Idempotent: `WHERE reset_at < period_start` matches a row once per period, so replicas
        sharing the database never apply one period twice.
        """
        start = _naive(limiter.period.start(now))
        if limiter.quota_increase:
            change, params = "available = available + %s", [limiter.quota_increase]
        else:
            change = "available = %s, epoch = epoch + 1, revoked_at = NULL"
            params = [limiter.initial_quota]
        return await self.execute(
            f'UPDATE "{LIMIT_TABLE}" SET {change}, quota_limit = %s, reset_at = %s, '
            "updated_at = %s WHERE limiter = %s AND reset_at < %s",
            [*params, limiter.initial_quota, start, _naive(now), limiter.name, start])

    async def summary(self) -> list[tuple[str, str, int, int]]:
        """(limiter, subject type, subjects, total available) for every limiter with rows."""
        rows = await self.fetch(
            "SELECT limiter, subject_type, COUNT(subject_id) AS subjects, "
            f'SUM(available) AS available FROM "{LIMIT_TABLE}" '
            "GROUP BY limiter, subject_type")
        return [(row["limiter"], row["subject_type"], int(row["subjects"]),
                 int(row["available"] or 0)) for row in rows]

    # --- administration ------------------------------------------------------------------------

    async def ensure_rows(self, limiters: Iterable[Limiter], subject_id: str,
                          now: dt.datetime) -> None:
        rows = [(lim, lim.subject(subject_id)) for lim in limiters]

        async def create(tx: Transaction) -> None:
            await self._create_rows(tx, rows, now)

        await self._write(create)

    async def set_available(self, limiter: Limiter, subject_id: str, tokens: int,
                            now: dt.datetime, *, revoke: bool = False) -> int:
        """Overwrite the available tokens (revoke: 0 and `revoked_at`) until the next reset."""
        async def update(tx: Transaction) -> int:
            await self._create_rows(tx, [(limiter, subject_id)], now)
            return await tx.execute(
                f'UPDATE "{LIMIT_TABLE}" SET available = %s, epoch = epoch + 1, '
                f"updated_at = %s, revoked_at = %s WHERE {KEY}",
                (tokens, _naive(now), _naive(now) if revoke else None, limiter.name,
                 limiter.subject_type, subject_id))

        result: int = await self._write(update)
        return result

    async def increase(self, limiter: Limiter, subject_id: str, tokens: int,
                       now: dt.datetime) -> int:
        """Add `tokens` to the available tokens (one atomic update), at most MAX_TOKENS."""
        async def update(tx: Transaction) -> int:
            await self._create_rows(tx, [(limiter, subject_id)], now)
            # Capped in SQL: PostgreSQL refuses a bigint overflow, SQLite turns it into a float.
            return await tx.execute(
                f'UPDATE "{LIMIT_TABLE}" SET available = CASE WHEN available > %s '
                "THEN %s ELSE available + %s END, updated_at = %s "
                f"WHERE {KEY}",
                (MAX_TOKENS - tokens, MAX_TOKENS, tokens, _naive(now), limiter.name,
                 limiter.subject_type, subject_id))

        result: int = await self._write(update)
        return result

    async def usage_totals(self, user_id: str) -> list[dict[str, Any]]:
        """Token usage history of `user_id` summed per (provider, model)."""
        rows = await self.fetch(
            "SELECT provider, model, SUM(input_tokens) AS input_tokens, "
            "SUM(output_tokens) AS output_tokens, COUNT(id) AS calls, "
            f'MAX(created_at) AS last_at FROM "{USAGE_TABLE}" WHERE user_id = %s '
            "GROUP BY provider, model ORDER BY provider, model", (user_id,))
        # PostgreSQL's SUM of a bigint is a numeric (Decimal), which JSON cannot hold.
        for row in rows:
            for key in ("input_tokens", "output_tokens", "calls"):
                row[key] = int(row[key])
            row["last_at"] = as_datetime(row["last_at"])
        return rows
