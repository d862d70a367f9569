"""The event loop's PostgreSQL pool of the stores still on peewee (the cache, quota and A2A
plugins): `lcore_core.storage`'s pool, fed the connection of a peewee database. It goes with
the last of those stores."""

from __future__ import annotations

from typing import Any

import peewee
import psycopg
import psycopg2.extras
from psycopg.adapt import Dumper

from lcore_core.storage.postgres import POOL_WAIT_S, ConnectionPool


class _Psycopg2JsonDumper(Dumper):
    """peewee wraps a JSON field's value for psycopg2 (`psycopg2.extras.Json`): send its text."""

    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: psycopg2.extras.Json) -> bytes:
        return obj.dumps(obj.adapted).encode()


class AsyncPostgres(ConnectionPool):
    """`ConnectionPool` from libpq keywords (`params`), as psycopg2 takes them."""

    def __init__(self, params: dict[str, Any], *, max_size: int, timeout: float = POOL_WAIT_S,
                 prepare: bool = True) -> None:
        super().__init__(psycopg.conninfo.make_conninfo(
            **{key: value for key, value in params.items() if value is not None}),
            max_size=max_size, timeout=timeout, prepare=prepare)

    def configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        conn.adapters.register_dumper(psycopg2.extras.Json, _Psycopg2JsonDumper)

    @staticmethod
    def split(max_connections: int) -> tuple[int, int]:
        """A component's configured pool size per process, shared out: (for this pool, for its
        worker threads' pool). The total stays within `max_connections`, but for 1."""
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
