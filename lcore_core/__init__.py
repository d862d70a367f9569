"""LCore core: the public face for plugin authors. Everything not exported here is private."""

from __future__ import annotations

__version__ = "0.1.0"

from lcore_core.auth import Action, Authenticator, AuthTuple, authorize, may, require_bearer
from lcore_core.cache import (
    CacheEntry,
    ConversationCache,
    ConversationInfo,
    MemoryCache,
    NoopCache,
)
from lcore_core.config import Config, Settings, load_config
from lcore_core.config.schema import HttpUrl, PostgresSchema, SQLiteSchema
from lcore_core.errors import (
    BackendUnavailable,
    BadRequest,
    ConfigError,
    Forbidden,
    LCoreError,
    NotFound,
    PluginLoadError,
    QuotaExceeded,
    StorageError,
    Unauthorized,
    UnprocessableEntity,
)
from lcore_core.events import QueryCompleted, QuotaTicket, Usage
from lcore_core.hookspecs import hookimpl
from lcore_core.jsonsafe import TooDeep as JsonTooDeep
from lcore_core.jsonsafe import loads as load_json
from lcore_core.migrate import Migration, MigrationError
from lcore_core.plugins import Plugins, load_plugins
from lcore_core.providers import (
    AuthProvider,
    CacheBackend,
    ConfigSection,
    ReadinessCheck,
    UpstreamImporter,
)
from lcore_core.runtime import Runtime
from lcore_core.storage import (
    Database,
    Duplicate,
    Storage,
    StorageSettings,
    Transaction,
    as_datetime,
)
from lcore_core.storage.cache import SqlCache
from lcore_core.web import doc, load_body, route

__all__ = [
    "Action",
    "AuthProvider",
    "AuthTuple",
    "Authenticator",
    "BackendUnavailable",
    "BadRequest",
    "CacheBackend",
    "CacheEntry",
    "Config",
    "ConfigError",
    "ConfigSection",
    "ConversationCache",
    "ConversationInfo",
    "Database",
    "Duplicate",
    "Forbidden",
    "HttpUrl",
    "JsonTooDeep",
    "LCoreError",
    "MemoryCache",
    "Migration",
    "MigrationError",
    "NoopCache",
    "NotFound",
    "PluginLoadError",
    "Plugins",
    "PostgresSchema",
    "QueryCompleted",
    "QuotaExceeded",
    "QuotaTicket",
    "ReadinessCheck",
    "Runtime",
    "SQLiteSchema",
    "Settings",
    "SqlCache",
    "Storage",
    "StorageError",
    "StorageSettings",
    "Transaction",
    "Unauthorized",
    "UnprocessableEntity",
    "UpstreamImporter",
    "Usage",
    "__version__",
    "as_datetime",
    "authorize",
    "doc",
    "hookimpl",
    "load_body",
    "load_config",
    "load_json",
    "load_plugins",
    "may",
    "require_bearer",
    "route",
]
