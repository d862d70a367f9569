"""PostgreSQL: LCore's one driver (psycopg 3, asyncio) and its pool.

Every statement runs on the event loop; no worker thread holds a connection, so a pool's
`max_size` is every connection its Database opens. Databases are shared per settings
(`lcore_core.storage.Storage`), so a section's `max_connections` bounds the process's
connections to it whatever number of stores use it.

A pooled connection is checked at checkout without a round trip: a session the server ended
(restart, `pg_terminate_backend`, idle timeout) has left its socket readable, a healthy idle
one has nothing to read. A connection that went silent without closing (a network cut) is
found out by its first statement, as it would be after a `SELECT 1` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import psycopg
from psycopg.abc import Buffer
from psycopg.pq import TransactionStatus
from psycopg.types.string import StrDumperUnknown

POOL_WAIT_S = 30
PREPARE_AFTER = 5
T = TypeVar("T")


class ConnectionPool:
    """At most `max_size` asyncio connections in autocommit; a caller waits up to `timeout`
    seconds for a free one. Errors are psycopg's (`psycopg.Error`).

    A statement, once sent, runs to its end even when its caller is cancelled (a client that
    went away): a turn already answered is still recorded. Parameters are bound by the server,
    so each needs a type from its context or from the value (`%s::int` where none is given).
    A statement run five times on a connection is prepared there; `prepare=False` for a
    pooler that does not keep prepared statements (PgBouncer before 1.21 in transaction mode).
    `statement_timeout` (seconds, 0: none) is set on each session: the server cancels a
    statement that runs or waits for a lock longer, and its caller gets the error.

    Not psycopg_pool: while the server is down its callers wait out their whole timeout, where
    this pool fails a call as soon as the connection attempt does, so a request gets its error
    at once.
    """

    def __init__(self, conninfo: str, *, max_size: int, timeout: float = POOL_WAIT_S,
                 prepare: bool = True, statement_timeout: float = 0) -> None:
        self.conninfo = conninfo
        self.statement_timeout_ms = round(statement_timeout * 1000)
        self.max_size = max(max_size, 1)
        self.timeout = timeout
        self.prepare_threshold = PREPARE_AFTER if prepare else None
        self._free = asyncio.Semaphore(self.max_size)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._running: set[asyncio.Task[Any]] = set()
        # Bumped by `close`: a connection opened before it is closed when it comes back.
        self._generation = 0
        self._born: dict[int, int] = {}

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
        if self.statement_timeout_ms:
            try:
                await self.time_out_statements(conn)
            except BaseException:
                await conn.close()
                raise
        self.configure(conn)
        self._born[id(conn)] = self._generation
        return conn

    async def time_out_statements(self, conn: psycopg.AsyncConnection[Any], *,
                                  off: bool = False) -> None:
        """Set the session's statement timeout to the pool's (or none, `off`): on the session
        rather than as a startup `options`, which PgBouncer refuses."""
        await conn.execute("SELECT set_config('statement_timeout', %s, false)",
                           ("0" if off else f"{self.statement_timeout_ms}ms",))

    def configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Adapt a new connection (a subclass registers its dumpers here)."""
        conn.adapters.register_dumper(str, _TextWithoutNul)

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._born.pop(id(conn), None)
        with contextlib.suppress(Exception):
            await conn.close()

    async def to_the_end(self, statement: Coroutine[Any, Any, T]) -> T:
        """Run `statement` in a task of its own that a cancelled caller does not stop."""
        task = asyncio.ensure_future(statement)
        self._running.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that went away leaves no warning behind

    async def fetch(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        """The rows `sql` returns, as dicts by column name."""
        async def run() -> list[dict[str, Any]]:
            async with self.connection() as conn:
                return await rows(await conn.execute(sql, params))

        return await self.to_the_end(run())

    async def execute(self, sql: str, params: Any = ()) -> int:
        """Run `sql`; the rows it changed."""
        async def run() -> int:
            async with self.connection() as conn:
                return (await conn.execute(sql, params)).rowcount

        return await self.to_the_end(run())

    async def close(self) -> None:
        """Let the statements under way finish, then close every connection: the idle ones now,
        one still lent out when it comes back. A later call opens a new one."""
        self._generation += 1
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._discard(conn)


class _TextWithoutNul(StrDumperUnknown):
    """A string parameter, its U+0000 characters as U+FFFD: PostgreSQL's text cannot hold NUL,
    and a query, an answer or an id that has one is stored rather than refused by the server
    (a lookup by such an id is changed the same way, so it still finds the row)."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", "\ufffd"))


def json_without_nul(text: str) -> str:
    """JSON text for a `jsonb` parameter: its `\\u0000` escapes (which jsonb refuses) as
    `\\ufffd`, an escaped backslash before `u0000` left alone."""
    if "\\u0000" not in text:  # nearly always: a plain scan, no regular expression
        return text
    return _NUL_ESCAPE.sub(lambda m: m.group(1) + "\\ufffd", text)


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


async def rows(cursor: psycopg.AsyncCursor[Any]) -> list[dict[str, Any]]:
    if cursor.description is None:
        return []
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]


def _alive(conn: psycopg.AsyncConnection[Any]) -> bool:
    return (not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
            and quiet(conn.fileno()))


def quiet(fd: int) -> bool:
    """Whether an idle session's socket has nothing to read, as a healthy one has: anything
    waiting (the server's FATAL message, or the end of the stream) means the session is over.
    `poll`, not `select`: descriptors past 1024 are common in a busy process."""
    poller = select.poll()
    try:
        poller.register(fd, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
