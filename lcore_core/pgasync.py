"""PostgreSQL statements run on the event loop, for the few on a query's path.

Every other statement of LCore and its plugins runs in a worker thread through peewee and
psycopg2. For the statements every query pays (the quota reservation and settlement, the user DB
row, the cache entry) that costs two crossings between the event loop and a thread, and at
concurrency both crossings wait for a busy core. `AsyncPostgres` runs such a statement on the
loop instead, on psycopg 3's asyncio connections. The SQL and its parameters are the ones peewee
gives (`PreparedQuery`, or a hand-written statement with `%s` markers).

A pooled connection is checked at checkout without a round trip, as `PostgresPool` checks its
own: a session the server ended has left its socket readable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

import peewee
import psycopg
import psycopg2.extras
from psycopg.adapt import Dumper
from psycopg.pq import TransactionStatus

from lcore_core.pgpool import quiet

POOL_WAIT_S = 30
PREPARE_AFTER = 5
T = TypeVar("T")


class _Psycopg2JsonDumper(Dumper):
    """peewee wraps a JSON field's value for psycopg2 (`psycopg2.extras.Json`): send its text."""

    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: psycopg2.extras.Json) -> bytes:
        return obj.dumps(obj.adapted).encode()


class AsyncPostgres:
    """A pool of asyncio PostgreSQL connections in autocommit: one statement, one round trip.

    `params` are libpq's connection keywords (`host`, `port`, `dbname`, `user`, `password`,
    `sslmode`, ...), as psycopg2 takes them. At most `max_size` connections are open; a caller
    waits up to `timeout` seconds for one to be free. Errors are psycopg's (`psycopg.Error`).

    A statement, once sent, runs to its end even when its caller is cancelled (a client that
    went away), as one in a worker thread does: a turn already answered is still recorded. The
    parameters are bound by the server, so each must have a type from its context or from the
    value: write `%s::int` where the context gives none. A statement run five times on a
    connection is prepared there, which halves the cost of the quota's statements (their plan
    costs as much as their run); `prepare=False` for a pooler that does not keep prepared
    statements (PgBouncer before 1.21 in transaction mode).

    Not psycopg_pool: while the server is down its callers wait out their whole timeout, where
    this pool (like peewee's, in the worker threads) fails the call as soon as the connection
    attempt does, so that a request gets its 503 at once.
    """

    def __init__(self, params: dict[str, Any], *, max_size: int, timeout: float = POOL_WAIT_S,
                 prepare: bool = True) -> None:
        # psycopg's default: a statement is prepared on its fifth run on a connection.
        self.prepare_threshold = PREPARE_AFTER if prepare else None
        self.conninfo = psycopg.conninfo.make_conninfo(
            **{key: value for key, value in params.items() if value is not None})
        self.timeout = timeout
        self._free = asyncio.Semaphore(max(max_size, 1))
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._running: set[asyncio.Task[Any]] = set()
        # Bumped by `close`: a connection opened before it is closed when it comes back.
        self._generation = 0
        self._born: dict[int, int] = {}

    @staticmethod
    def split(max_connections: int) -> tuple[int, int]:
        """A component's configured pool size per process, shared out: (for this pool, for its
        worker threads' pool), which now serves only the calls off a query's path. The total
        stays within `max_connections`, but for 1, which gives one to each."""
        threads = max(1, max_connections // 4)
        return max(1, max_connections - threads), threads

    @classmethod
    def of(cls, database: peewee.Database, *, max_size: int, timeout: float = POOL_WAIT_S,
           prepare: bool = True) -> AsyncPostgres:
        """A pool to the database a peewee `PostgresqlDatabase` (or pool) connects to."""
        return cls({**database.connect_params, "dbname": database.database},
                   max_size=max_size, timeout=timeout, prepare=prepare)

    @classmethod
    def sharing(cls, database: peewee.Database, section: Any, *,
                timeout: float = POOL_WAIT_S) -> AsyncPostgres:
        """The loop's pool beside `database`, a worker threads' pool made with the other share
        of `split`, for a PostgreSQL section (`max_connections`, `prepared_statements`)."""
        return cls.of(database, max_size=cls.split(section["max_connections"])[0],
                      timeout=timeout, prepare=section.get("prepared_statements", True))

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of the pool, for one statement or transaction."""
        try:
            await asyncio.wait_for(self._free.acquire(), self.timeout)
        except TimeoutError:
            raise psycopg.OperationalError(
                f"no connection free in the pool within {self.timeout:g} s") from None
        conn = None
        try:
            conn = await self._checkout()
            yield conn
        finally:
            if conn is not None:
                reusable = (self._born.get(id(conn)) == self._generation and not conn.closed
                            and conn.info.transaction_status == TransactionStatus.IDLE)
                if reusable:
                    self._idle.append(conn)
                else:  # broken, inside a transaction, or opened before `close`
                    await self._discard(conn)
            self._free.release()

    async def _checkout(self) -> psycopg.AsyncConnection[Any]:
        while self._idle:
            conn = self._idle.pop()
            if _alive(conn):
                return conn
            await self._discard(conn)
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True,
                                                     prepare_threshold=self.prepare_threshold)
        conn.adapters.register_dumper(psycopg2.extras.Json, _Psycopg2JsonDumper)
        self._born[id(conn)] = self._generation
        return conn

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._born.pop(id(conn), None)
        with contextlib.suppress(Exception):
            await conn.close()

    async def _to_the_end(self, statement: Coroutine[Any, Any, T]) -> T:
        """Run `statement` in a task of its own that a cancelled caller does not stop."""
        task = asyncio.ensure_future(statement)
        self._running.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that went away leaves no warning behind

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows `sql` returns, as dicts by column name."""
        async def run() -> list[dict[str, Any]]:
            async with self.connection() as conn:
                cursor = await conn.execute(sql, params)
                if cursor.description is None:
                    return []
                names = [column.name for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]

        return await self._to_the_end(run())

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run `sql`; the rows it changed."""
        async def run() -> int:
            async with self.connection() as conn:
                return (await conn.execute(sql, params)).rowcount

        return await self._to_the_end(run())

    async def close(self) -> None:
        """Let the statements under way finish, then close every connection: the idle ones now,
        one still lent out when it comes back. A later call opens a new one."""
        self._generation += 1
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._discard(conn)


def _alive(conn: psycopg.AsyncConnection[Any]) -> bool:
    """An idle connection whose socket has nothing to read; a session the server ended
    (restart, `pg_terminate_backend`, idle timeout) has left its goodbye there."""
    return (not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
            and quiet(conn.fileno()))
