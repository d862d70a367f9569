"""Hook implementations of lcore-cache-sqlite: `conversation_cache.type: sqlite`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lcore_cache_sqlite.cache import SqliteCache
from lcore_cache_sqlite.migrate import import_cache
from lcore_core import CacheBackend, SQLiteSchema, UpstreamImporter, hookimpl

if TYPE_CHECKING:
    from lcore_core import Config, Storage


def _factory(settings: Any, config: Config, storage: Storage | None = None) -> SqliteCache:
    return SqliteCache(settings["db_path"], storage)


@hookimpl
def lcore_cache_backends() -> list[CacheBackend]:
    return [CacheBackend("sqlite", _factory, schema=SQLiteSchema, required=True,
                         description="one SQLite file (conversation_cache.sqlite.db_path)")]


@hookimpl
def lcore_upstream_importers(config: Config) -> list[UpstreamImporter]:
    if config.conversation_cache.type != "sqlite":
        return []
    return [UpstreamImporter("cache_sqlite", "conversation_cache", import_cache)]
