"""Quota state in SQLite or PostgreSQL (peewee). Synchronous, for the async layer to call in
threads, but for the reservation and the settlement on PostgreSQL: on every query's path, they
run on the event loop (`reserve`, `settle`, through `AsyncPostgres`).

Every change of a budget is one SQL `UPDATE` computed by the database (`available = available -
:n`), never a value read into Python and written back, so any number of threads and LCore
processes sharing the database add up exactly. A reservation takes tokens only where the row,
locked, has `available >= :n`: it cannot overdraw, however many requests race for the last
tokens.

On PostgreSQL a reservation and a settlement (with its history row) are each one statement in
autocommit, one round trip: a `SELECT ... ORDER BY <key> FOR UPDATE` in a CTE locks the rows
in key order (one order for every statement and every configuration: no deadlock), then they
are updated together. SQLite, in-process and with one writer at a time, runs the same steps
row by row in one transaction.

Tables (in `postgres.namespace` on PostgreSQL):

- `lcore_quota_limit`: one row per (limiter, subject type `u`/`c`, subject id; `""` for the
  cluster) with `quota_limit`, `available`, `epoch` (bumped whenever `available` is overwritten,
  so a reservation made before a reset is not refunded into the new period), `reset_at` (start of
  the last period applied), `updated_at` and `revoked_at`.
- `lcore_quota_token_usage`: one row per successful LLM call (user, provider, model, input and
  output tokens, time) when `enable_token_history` is on; `origin` is NULL for those, `upstream`
  for the totals `lcore migrate --from-upstream` carried over from upstream's `token_usage`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import peewee
import psycopg
from playhouse.pool import MaxConnectionsExceeded

from lcore_core import AsyncPostgres, PostgresPool, StorageSettings, install_schema
from lcore_quota.config import CLUSTER_LIMITER, SUBJECT_TYPES
from lcore_quota.periods import Period

SCHEMA_VERSION = 2  # 2: lcore_quota_token_usage.origin
COMPONENT = "quota"
POOL_WAIT_S = 30
CLUSTER_SUBJECT = ""
# The largest token count a quota column (64-bit signed) holds.
MAX_TOKENS = 2**63 - 1
RESERVE_ATTEMPTS = 3
T = TypeVar("T")


class QuotaDatabaseError(Exception):
    """The quota database failed; `where` names it (path or host:port/db)."""

    def __init__(self, where: str, error: BaseException) -> None:
        self.where = where
        self.error = error
        super().__init__(f"{where}: {type(error).__name__}: {str(error).strip()}")


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


def _models(database: peewee.Database, namespace: str | None) -> tuple[Any, Any, Any]:
    """Model classes bound to `database` (one set per store: no process-wide binding)."""

    class Base(peewee.Model):
        class Meta:
            schema = namespace

    Base._meta.set_database(database)

    class QuotaLimit(Base):
        limiter = peewee.TextField()
        subject_type = peewee.CharField(max_length=1)
        subject_id = peewee.TextField()
        quota_limit = peewee.BigIntegerField()
        available = peewee.BigIntegerField()
        epoch = peewee.IntegerField(default=0)
        reset_at = peewee.DateTimeField()
        updated_at = peewee.DateTimeField()
        revoked_at = peewee.DateTimeField(null=True)

        class Meta:
            table_name = "lcore_quota_limit"
            primary_key = peewee.CompositeKey("limiter", "subject_type", "subject_id")

    class TokenUsage(Base):
        id = peewee.BigAutoField()
        user_id = peewee.TextField()
        provider = peewee.TextField()
        model = peewee.TextField()
        input_tokens = peewee.BigIntegerField()
        output_tokens = peewee.BigIntegerField()
        created_at = peewee.DateTimeField()
        origin = peewee.TextField(null=True)

        class Meta:
            table_name = "lcore_quota_token_usage"
            indexes = ((("user_id", "created_at"), False),)

    class Version(Base):
        component = peewee.CharField(primary_key=True, max_length=64)
        version = peewee.IntegerField()

        class Meta:
            table_name = "lcore_schema_version"

    return QuotaLimit, TokenUsage, Version


def open_database(settings: Any) -> tuple[peewee.Database, str, str | None]:
    """The database of a validated `quota_handlers` section, its description and namespace."""
    pg = settings.get("postgres")
    if pg:
        # The connection keywords of the storage service (password file, TLS, timeouts,
        # application_name), as every store has them.
        params = StorageSettings.from_section(settings, where="quota_handlers").conninfo()
        params.pop("dbname")
        pool = PostgresPool(pg["db"], max_connections=AsyncPostgres.split(
            pg["max_connections"])[1], timeout=POOL_WAIT_S, **params)
        return pool, f"PostgreSQL {pg['host']}:{pg['port']}/{pg['db']}", pg["namespace"]
    path = Path(settings["sqlite"]["db_path"]).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    # IMMEDIATE: a transaction takes the write lock first, so it waits (busy_timeout) instead
    # of failing when another connection writes in between.
    database = peewee.SqliteDatabase(str(path), lock_type="IMMEDIATE", pragmas={
        "journal_mode": "wal", "busy_timeout": 30000, "synchronous": "normal"})
    return database, f"SQLite {path}", None


class QuotaStore:
    """The quota tables of one database."""

    def __init__(self, settings: Any) -> None:
        self.db, self.where, self.namespace = open_database(settings)
        self.is_postgres = isinstance(self.db, peewee.PostgresqlDatabase)
        self.Limit, self.Usage, self.Version = _models(self.db, self.namespace)
        self._setup_lock = threading.Lock()
        self.ready = False
        # The reservation and the settlement, on every query's path, run on the event loop.
        self.pg = AsyncPostgres.sharing(self.db, settings["postgres"]) \
            if self.is_postgres else None

    # --- plumbing ---------------------------------------------------------------------------

    def call(self, fn: Callable[[], T], *, atomic: bool = False) -> T:
        """Run `fn` on a connection (in a transaction if `atomic`); errors become
        `QuotaDatabaseError`."""
        try:
            if not self.ready:
                self._setup()
            with self.db.connection_context():
                if atomic:
                    with self.db.atomic():
                        return fn()
                return fn()
        except (peewee.PeeweeException, MaxConnectionsExceeded, OSError) as exc:
            lost = isinstance(exc, peewee.OperationalError | peewee.InterfaceError)
            if self.is_postgres and lost:
                # The server went away: the idle pooled connections are dead as well; drop
                # them so that one request, not one per pooled connection, learns of it.
                self.db.close_idle()  # type: ignore[attr-defined]
            raise QuotaDatabaseError(self.where, exc) from exc

    async def _pg_fetch(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        assert self.pg is not None
        try:
            if not self.ready:
                await asyncio.to_thread(self._setup)
            return await self.pg.fetch(sql, params)
        except (psycopg.Error, OSError, peewee.PeeweeException, MaxConnectionsExceeded) as exc:
            raise QuotaDatabaseError(self.where, exc) from exc

    def setup(self) -> None:
        """Create the schema and tables (idempotent; replicas may run it side by side)."""
        self.call(lambda: None)

    def _setup(self) -> None:
        with self._setup_lock:
            if self.ready:
                return
            with self.db.connection_context():
                install_schema(self.db, [self.Limit, self.Usage], self.Version, COMPONENT,
                               SCHEMA_VERSION,
                               namespace=self.namespace if self.is_postgres else None)
            self.ready = True

    def peek(self, fn: Callable[[], T], default: T) -> T:
        """`fn` on a connection if the tables exist, else `default`; creates nothing, not even
        the SQLite file (the migration's dry run)."""
        if self.ready:
            return self.call(fn)
        if not self.is_postgres and not Path(self.db.database).exists():
            return default
        try:
            with self.db.connection_context():
                if not self.db.table_exists(self.Limit._meta.table_name, self.namespace):
                    return default
                return fn()
        except (peewee.PeeweeException, MaxConnectionsExceeded, OSError) as exc:
            raise QuotaDatabaseError(self.where, exc) from exc

    def close(self) -> None:
        if self.is_postgres:
            self.db.close_all()  # type: ignore[attr-defined]
        else:
            self.db.close()

    def ping(self) -> None:
        self.call(lambda: self.db.execute_sql("SELECT 1").fetchone())

    def _key(self, limiter: str, subject_type: str, subject_id: str) -> Any:
        L = self.Limit
        return (L.limiter == limiter) & (L.subject_type == subject_type) & (
            L.subject_id == subject_id)

    def _create_row(self, limiter: Limiter, subject_id: str, now: dt.datetime) -> None:
        self._create_rows([(limiter, subject_id)], now)

    def _create_rows(self, rows: list[tuple[Limiter, str]], now: dt.datetime) -> None:
        """Give each (limiter, subject) without a row its full quota (one statement).

        In key order: two of these creating the same rows wait for each other in one order.
        """
        rows = sorted(rows, key=lambda row: (row[0].name, row[0].subject_type, row[1]))
        self.Limit.insert_many([{
            "limiter": limiter.name, "subject_type": limiter.subject_type,
            "subject_id": subject_id, "quota_limit": limiter.initial_quota,
            "available": limiter.initial_quota, "epoch": 0,
            "reset_at": _naive(limiter.period.start(now)), "updated_at": _naive(now)}
            for limiter, subject_id in rows]).on_conflict_ignore().execute()

    def _table(self, model: Any) -> str:
        """The quoted, schema-qualified table of `model`, for the hand-written statements."""
        sql: str = self.db.get_sql_context().sql(model._meta.entity).query()[0]
        return sql

    # --- the request path -----------------------------------------------------------------

    def _reserve_rows(self, wanted: Iterable[tuple[Limiter, str, int]],
                      now: dt.datetime) -> list[Hold]:
        """`reserve` on SQLite: row by row in one transaction, which takes SQLite's one write
        lock first (a worker thread's call)."""
        wanted = list(wanted)
        L = self.Limit

        def take() -> list[Hold]:
            holds = []
            for limiter, subject_id, tokens in wanted:
                key = self._key(limiter.name, limiter.subject_type, subject_id)
                need = max(tokens, 1)
                for _ in range(RESERVE_ATTEMPTS):
                    taken = list(L.update(available=L.available - tokens, updated_at=_naive(now))
                                 .where(key & (L.available >= need))
                                 .returning(L.epoch).tuples().execute())
                    if taken:
                        holds.append(Hold(limiter.name, limiter.subject_type, subject_id,
                                          tokens, taken[0][0]))
                        break
                    row = L.select(L.available).where(key).tuples().first()
                    if row is None:
                        self._create_row(limiter, subject_id, now)
                    elif row[0] < need:
                        # Raising rolls back the holds already taken on other limiters.
                        raise Refused(limiter, row[0], need)
                else:
                    raise Refused(limiter, 0, need)
            return holds

        return self.call(take, atomic=True)

    def _reserve_statement(self, wanted: list[tuple[Limiter, str, int]],
                           now: dt.datetime) -> tuple[str, list[Any]]:
        """`reserve` on PostgreSQL as one statement: its rows are (ord, available, epoch) for
        each wanted row that exists, epoch NULL everywhere when any has too few tokens."""
        values = [(i, limiter.name, limiter.subject_type, subject_id, tokens, max(tokens, 1))
                  for i, (limiter, subject_id, tokens) in enumerate(wanted)]
        limit = self._table(self.Limit)
        # `locked` returns each row as it is once locked (a concurrent change committed in
        # between included), so the check and the update below see the same tokens. The casts
        # type the VALUES whatever the driver sends.
        row = "(%s::int, %s::text, %s::text, %s::text, %s::bigint, %s::bigint)"
        sql = f"""
            WITH wanted (ord, limiter, subject_type, subject_id, tokens, need) AS (
                VALUES {", ".join([row] * len(values))}),
            locked AS (
                SELECT w.ord, w.tokens, w.need, l.limiter, l.subject_type, l.subject_id,
                       l.available
                FROM {limit} l JOIN wanted w ON (l.limiter, l.subject_type, l.subject_id)
                                               = (w.limiter, w.subject_type, w.subject_id)
                ORDER BY l.limiter, l.subject_type, l.subject_id FOR UPDATE OF l),
            taken AS (
                UPDATE {limit} l SET available = l.available - k.tokens, updated_at = %s
                FROM locked k
                WHERE (l.limiter, l.subject_type, l.subject_id)
                      = (k.limiter, k.subject_type, k.subject_id)
                  AND (SELECT count(*) FROM locked c WHERE c.available >= c.need) = %s
                RETURNING k.ord, l.epoch)
            SELECT k.ord, k.available, t.epoch FROM locked k LEFT JOIN taken t USING (ord)"""
        return sql, [value for row in values for value in row] + [_naive(now), len(values)]

    async def reserve(self, wanted: Iterable[tuple[Limiter, str, int]],
                      now: dt.datetime) -> list[Hold]:
        """Take `tokens` from each (limiter, subject, tokens), all or nothing; raises `Refused`
        naming the first limiter, in the order given, that has too few.

        A limiter needs at least `max(tokens, 1)` available. Rows are locked in one order (see
        the module), so concurrent reservations never wait on each other in a cycle. On
        PostgreSQL one statement on the event loop (plus one, in a worker thread, to create
        rows missing); on SQLite row by row in a worker thread.
        """
        wanted = list(wanted)
        if self.pg is None or not wanted:
            return await asyncio.to_thread(self._reserve_rows, wanted, now)
        sql, params = self._reserve_statement(wanted, now)
        missing: list[int] = []
        for _ in range(RESERVE_ATTEMPTS):
            found = {row["ord"]: (row["available"], row["epoch"])
                     for row in await self._pg_fetch(sql, params)}
            missing = [i for i in range(len(wanted)) if i not in found]
            if missing:
                # First use, or rows committed after the statement's snapshot (then the
                # insert does nothing): the next attempt sees them all.
                await asyncio.to_thread(self.call, partial(
                    self._create_rows, [wanted[i][:2] for i in missing], now))
                continue
            if all(epoch is not None for _, epoch in found.values()):
                return [Hold(limiter.name, limiter.subject_type, subject_id, tokens, found[i][1])
                        for i, (limiter, subject_id, tokens) in enumerate(wanted)]
            for i, (limiter, _, tokens) in enumerate(wanted):
                if found[i][0] < max(tokens, 1):
                    raise Refused(limiter, found[i][0], max(tokens, 1))
        limiter, _, tokens = wanted[missing[0] if missing else 0]
        raise Refused(limiter, 0, max(tokens, 1))

    def _settle_rows(self, holds: Iterable[Hold], used: int, now: dt.datetime,
                     usage: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """`settle` on SQLite, in one transaction (a worker thread's call)."""
        holds = list(holds)
        L = self.Limit

        def apply() -> dict[str, dict[str, Any]]:
            rows = {}
            for hold in holds:
                delta = peewee.Case(None, [(L.epoch == hold.epoch, hold.tokens - used)], -used)
                for row in (L.update(available=L.available + delta, updated_at=_naive(now))
                            .where(self._key(hold.limiter, hold.subject_type, hold.subject_id))
                            .returning(L.limiter, L.quota_limit, L.available, L.revoked_at)
                            .dicts().execute()):
                    rows[row["limiter"]] = row
            if usage is not None:
                self.Usage.insert(created_at=_naive(now), **usage).execute()
            return rows

        return self.call(apply, atomic=True)

    def _settle_statement(self, holds: list[Hold], used: int, now: dt.datetime,
                          usage: dict[str, Any] | None) -> tuple[str, list[Any]]:
        """`settle` on PostgreSQL as one statement, the history row in a CTE of its own."""
        values = [(h.limiter, h.subject_type, h.subject_id, h.tokens, h.epoch) for h in holds]
        limit = self._table(self.Limit)
        params: list[Any] = [value for row in values for value in row] + [used, _naive(now)]
        history = ""
        if usage is not None:
            columns = ("user_id", "provider", "model", "input_tokens", "output_tokens")
            history = (f", recorded AS (INSERT INTO {self._table(self.Usage)} "
                       f"({', '.join(columns)}, created_at) VALUES "
                       f"({', '.join(['%s'] * (len(columns) + 1))}))")
            params += [usage[column] for column in columns] + [_naive(now)]
        # Locked in key order, as `reserve` locks them, before the update touches any row.
        row = "(%s::text, %s::text, %s::text, %s::bigint, %s::int)"
        sql = f"""
            WITH held (limiter, subject_type, subject_id, tokens, epoch) AS (
                VALUES {", ".join([row] * len(values))}),
            locked AS (
                SELECT h.* FROM {limit} l JOIN held h
                    ON (l.limiter, l.subject_type, l.subject_id)
                       = (h.limiter, h.subject_type, h.subject_id)
                ORDER BY l.limiter, l.subject_type, l.subject_id FOR UPDATE OF l),
            settled AS (
                UPDATE {limit} l
                SET available = l.available
                                + CASE WHEN l.epoch = k.epoch THEN k.tokens ELSE 0 END
                                - %s::bigint,
                    updated_at = %s
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
        One statement on the event loop on PostgreSQL, a worker thread's call on SQLite.

        A hold taken before the row's budget was overwritten (a reset, `set`, `revoke`: the
        epoch moved on) refunds nothing: that budget is gone; `used` is still charged.
        `usage` (user_id, provider, model, input_tokens, output_tokens) adds a history row.
        """
        holds = list(holds)
        if self.pg is None or not holds:
            return await asyncio.to_thread(self._settle_rows, holds, used, now, usage)
        rows = await self._pg_fetch(*self._settle_statement(holds, used, now, usage))
        return {row["limiter"]: row for row in rows}

    def available(self, limiters: Iterable[Limiter], user_id: str) -> dict[str, Any]:
        """The rows of `user_id` and the cluster for `limiters`, by limiter name (None: no row)."""
        limiters = list(limiters)
        L = self.Limit

        def fetch() -> dict[str, Any]:
            found: dict[str, Any] = dict.fromkeys(lim.name for lim in limiters)
            where = None
            for lim in limiters:
                cond = self._key(lim.name, lim.subject_type, lim.subject(user_id))
                where = cond if where is None else where | cond
            if where is None:
                return found
            for row in L.select().where(where).dicts():
                found[row["limiter"]] = row
            return found

        return self.call(fetch)

    # --- the scheduler -----------------------------------------------------------------------

    def apply_period(self, limiter: Limiter, now: dt.datetime) -> int:
        """Reset (or, with `quota_increase`, top up) every row of `limiter` not yet done for the
        period containing `now`; returns the rows changed.

        Idempotent: `WHERE reset_at < period_start` matches a row once per period, so replicas
        sharing the database never apply one period twice.
        """
        L = self.Limit
        start = _naive(limiter.period.start(now))
        changes: dict[Any, Any] = {L.reset_at: start, L.updated_at: _naive(now)}
        if limiter.quota_increase:
            changes[L.available] = L.available + limiter.quota_increase
        else:
            changes.update({L.available: limiter.initial_quota, L.epoch: L.epoch + 1,
                            L.revoked_at: None})
        changes[L.quota_limit] = limiter.initial_quota
        return self.call(lambda: L.update(changes).where(
            (L.limiter == limiter.name) & (L.reset_at < start)).execute())

    def summary(self) -> list[tuple[str, str, int, int]]:
        """(limiter, subject type, subjects, total available) for every limiter with rows."""
        L = self.Limit
        return self.call(lambda: list(
            L.select(L.limiter, L.subject_type, peewee.fn.COUNT(L.subject_id),
                     peewee.fn.SUM(L.available))
            .group_by(L.limiter, L.subject_type).tuples()))

    # --- administration ------------------------------------------------------------------------

    def ensure_rows(self, limiters: Iterable[Limiter], subject_id: str, now: dt.datetime) -> None:
        limiters = list(limiters)

        def create() -> None:
            for lim in limiters:
                self._create_row(lim, lim.subject(subject_id), now)

        self.call(create, atomic=True)

    def set_available(self, limiter: Limiter, subject_id: str, tokens: int, now: dt.datetime,
                      *, revoke: bool = False) -> int:
        """Overwrite the available tokens (revoke: 0 and `revoked_at`) until the next reset."""
        L = self.Limit

        def update() -> int:
            self._create_row(limiter, subject_id, now)
            changes: dict[Any, Any] = {L.available: tokens, L.epoch: L.epoch + 1,
                                       L.updated_at: _naive(now),
                                       L.revoked_at: _naive(now) if revoke else None}
            return L.update(changes).where(
                self._key(limiter.name, limiter.subject_type, subject_id)).execute()

        return self.call(update, atomic=True)

    def increase(self, limiter: Limiter, subject_id: str, tokens: int, now: dt.datetime) -> int:
        """Add `tokens` to the available tokens (one atomic update), at most MAX_TOKENS."""
        L = self.Limit
        # Capped in SQL: PostgreSQL refuses a bigint overflow, SQLite turns it into a float.
        capped = peewee.Case(None, [(L.available > MAX_TOKENS - tokens, MAX_TOKENS)],
                             L.available + tokens)

        def update() -> int:
            self._create_row(limiter, subject_id, now)
            return L.update(available=capped, updated_at=_naive(now)).where(
                self._key(limiter.name, limiter.subject_type, subject_id)).execute()

        return self.call(update, atomic=True)

    def usage_totals(self, user_id: str) -> list[dict[str, Any]]:
        """Token usage history of `user_id` summed per (provider, model)."""
        U = self.Usage
        rows = self.call(lambda: list(
            U.select(U.provider, U.model, peewee.fn.SUM(U.input_tokens).alias("input_tokens"),
                     peewee.fn.SUM(U.output_tokens).alias("output_tokens"),
                     peewee.fn.COUNT(U.id).alias("calls"),
                     peewee.fn.MAX(U.created_at).alias("last_at"))
            .where(U.user_id == user_id).group_by(U.provider, U.model)
            .order_by(U.provider, U.model).dicts()))
        # PostgreSQL's SUM of a bigint is a numeric (Decimal), which JSON cannot hold.
        for row in rows:
            for key in ("input_tokens", "output_tokens", "calls"):
                row[key] = int(row[key])
        return rows
