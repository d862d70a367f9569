"""The conversation cache in one SQLite file: the core's `SqlCache` on that file's Database
(`lcore_core.storage`; every statement in a worker thread, writers of a process in turn)."""

from __future__ import annotations

from pathlib import Path

from lcore_core import SqlCache, Storage


class SqliteCache(SqlCache):
    """A `ConversationCache` in a SQLite file; several processes may share the file."""

    def __init__(self, db_path: str | Path, storage: Storage | None = None) -> None:
        self.path = Path(db_path).expanduser()
        database = (storage or Storage()).database(
            {"sqlite": {"db_path": str(self.path)}}, where="conversation_cache")
        super().__init__(database, component="cache_sqlite", owned=storage is None,
                         where=f"SQLite {self.path}")
