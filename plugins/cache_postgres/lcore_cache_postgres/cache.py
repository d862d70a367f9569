"""The conversation cache in PostgreSQL: the core's `SqlCache` on the Database of the
`conversation_cache.postgres` section (`lcore_core.storage`: psycopg 3 on the event loop, one
pool per place that `max_connections` bounds, reconnecting by itself after a restart).

The tables live in the configured schema (`namespace`); several LCore processes may share them.
"""

from __future__ import annotations

from typing import Any

from lcore_core import SqlCache, Storage


class PostgresCache(SqlCache):
    """A `ConversationCache` in PostgreSQL, shared by every LCore process that uses it."""

    def __init__(self, settings: Any, storage: Storage | None = None) -> None:
        self.namespace: str = settings["namespace"]
        database = (storage or Storage()).database({"postgres": settings},
                                                   where="conversation_cache")
        super().__init__(database, component="cache_postgres", owned=storage is None,
                         where=f"PostgreSQL {settings['host']}:{settings['port']}/"
                               f"{settings['db']}")
