"""Hook implementations of lcore-cache-postgres: `conversation_cache.type: postgres`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lcore_cache_postgres.cache import PostgresCache

# PostgresSchema: upstream's keys {host, port, db, user, password, namespace, ssl_mode,
# gss_encmode, ca_cert_path} plus LCore's password_path and max_connections (pool size).
from lcore_cache_postgres.migrate import import_cache
from lcore_core import CacheBackend, PostgresSchema, UpstreamImporter, hookimpl

if TYPE_CHECKING:
    from lcore_core import Config, Storage


def _factory(settings: Any, config: Config, storage: Storage | None = None) -> PostgresCache:
    return PostgresCache(settings, storage)


@hookimpl
def lcore_cache_backends() -> list[CacheBackend]:
    return [CacheBackend("postgres", _factory, schema=PostgresSchema, required=True,
                         description="PostgreSQL, shared by replicas "
                                     "(conversation_cache.postgres)")]


@hookimpl
def lcore_upstream_importers(config: Config) -> list[UpstreamImporter]:
    if config.conversation_cache.type != "postgres":
        return []
    return [UpstreamImporter("cache_postgres", "conversation_cache", import_cache)]
