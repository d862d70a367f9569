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
import select
from collections.abc import AsyncIterator, Sequence
from typing import Any

import peewee
import psycopg
import psycopg2.extras
from psycopg.adapt import Dumper
from psycopg.pq import TransactionStatus

POOL_WAIT_S = 30


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

    Not psycopg_pool: while the server is down its callers wait out their whole timeout, where
    this pool (like peewee's, in the worker threads) fails the call as soon as the connection
    attempt does, so that a request gets its 503 at once.
    """

    def __init__(self, params: dict[str, Any], *, max_size: int,
                 timeout: float = POOL_WAIT_S) -> None:
        self.conninfo = psycopg.conninfo.make_conninfo(
            **{key: value for key, value in params.items() if value is not None})
        self.timeout = timeout
        self._free = asyncio.Semaphore(max(max_size, 1))
        self._idle: list[psycopg.AsyncConnection[Any]] = []

    @classmethod
    def of(cls, database: peewee.Database, *, max_size: int | None = None,
           timeout: float = POOL_WAIT_S) -> AsyncPostgres:
        """A pool to the database a peewee `PostgresqlDatabase` (or pool) connects to."""
        params = {**database.connect_params, "dbname": database.database}
        size = max_size or getattr(database, "_max_connections", None) or 10
        return cls(params, max_size=size, timeout=timeout)

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
                if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
                    self._idle.append(conn)
                else:  # broken, or cut in the middle of a statement: not reusable
                    await _close(conn)
            self._free.release()

    async def _checkout(self) -> psycopg.AsyncConnection[Any]:
        while self._idle:
            conn = self._idle.pop()
            if _alive(conn):
                return conn
            await _close(conn)
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        conn.adapters.register_dumper(psycopg2.extras.Json, _Psycopg2JsonDumper)
        return conn

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows `sql` returns, as dicts by column name."""
        async with self.connection() as conn:
            cursor = await conn.execute(sql, params)
            if cursor.description is None:
                return []
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run `sql`; the rows it changed."""
        async with self.connection() as conn:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

    async def close(self) -> None:
        """Close the idle connections (one in use is closed when it comes back broken, or
        kept for a next use that reopens nothing: call this at shutdown)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close(conn)


def _alive(conn: psycopg.AsyncConnection[Any]) -> bool:
    """An idle connection is alive when its socket has nothing to read: a session the server
    ended (restart, `pg_terminate_backend`, idle timeout) has left its goodbye there."""
    if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


async def _close(conn: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception):
        await conn.close()
