"""SQLite: the one place that decides how LCore's stores reach a SQLite file.

sqlite3 blocks, so every statement runs in a worker thread (`asyncio.to_thread`), never on the
event loop; PostgreSQL's run on the loop (`lcore_core.storage.postgres`). Connections are kept
and reused: opening one costs more than a one-row statement, and closing the last one
checkpoints the WAL. A writer waits up to `LOCK_TIMEOUT_S` for another process's lock, then
fails. Within the process writers take turns on the event loop first: a writer blocked in
SQLite holds a worker thread, and enough of them would leave none for the transaction holding
the lock to commit with.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

LOCK_TIMEOUT_S = 5.0
T = TypeVar("T")


class SQLiteFile:
    """Connections to one file, each lent to one call (or one transaction) at a time."""

    def __init__(self, path: Path, *, lock_timeout: float = LOCK_TIMEOUT_S,
                 read_only: bool = False) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self.read_only = read_only
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer: asyncio.Lock | None = None

    @property
    def writer(self) -> asyncio.Lock:
        """Held by the process's one writer at a time (made on first use, on the loop)."""
        if self._writer is None:
            self._writer = asyncio.Lock()
        return self._writer

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            # `mode=ro`: a missing file is an error, not a new empty database, and no write
            # (not even the journal mode) reaches the file.
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                   timeout=self.lock_timeout, isolation_level=None,
                                   check_same_thread=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit (isolation_level None): a transaction is an explicit BEGIN.
        conn = sqlite3.connect(str(self.path), timeout=self.lock_timeout,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("PRAGMA synchronous=1")
        conn.execute("PRAGMA foreign_keys=1")
        return conn

    @contextlib.contextmanager
    def _lend(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        finally:
            with self._lock:
                self._idle.append(conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """`fn(connection)` in a worker thread (`write`: after the process's other writers)."""
        def call() -> T:
            with self._lend() as conn:
                return fn(conn)

        if not write:
            return await asyncio.to_thread(call)
        async with self.writer:
            return await asyncio.to_thread(call)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[sqlite3.Connection]:
        """One connection kept for several calls (a transaction, which may write: it waits
        for the process's other writers); use it with `on`."""
        async with self.writer, self._held() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[sqlite3.Connection]:
        """One connection kept for several reads (a writer of this process is not waited for,
        nor kept waiting: in WAL mode SQLite lets a reader and a writer go side by side)."""
        async with self._held() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _held(self) -> AsyncIterator[sqlite3.Connection]:
        manager = self._lend()
        conn = await asyncio.to_thread(manager.__enter__)
        try:
            yield conn
        except BaseException as exc:
            await asyncio.to_thread(manager.__exit__, type(exc), exc, exc.__traceback__)
            raise
        else:
            await asyncio.to_thread(manager.__exit__, None, None, None)

    @staticmethod
    async def on(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(fn, conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def exists(self) -> bool:
        return self.path.exists()


def rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    if cursor.description is None:
        return []
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
