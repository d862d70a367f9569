"""LCore plugin lcore-cache-postgres: the conversation cache in PostgreSQL."""

from __future__ import annotations

from lcore_cache_postgres.cache import PostgresCache

__all__ = ["PostgresCache"]
