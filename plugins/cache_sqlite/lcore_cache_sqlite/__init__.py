"""LCore plugin lcore-cache-sqlite: the conversation cache in a SQLite file."""

from __future__ import annotations

from lcore_cache_sqlite.cache import SqliteCache

__all__ = ["SqliteCache"]
