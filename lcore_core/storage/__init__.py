"""LCore's storage service: settings from any `sqlite`/`postgres` section, one driver per
engine, one Database per place (shared), one schema-version table, one error type."""

from __future__ import annotations

from lcore_core.storage.database import (
    VERSION_TABLE,
    Database,
    Duplicate,
    Storage,
    Transaction,
    as_datetime,
    iso,
)
from lcore_core.storage.settings import DEFAULT_SQLITE_PATH, StorageSettings

__all__ = ["DEFAULT_SQLITE_PATH", "VERSION_TABLE", "Database", "Duplicate", "Storage",
           "StorageSettings", "Transaction", "as_datetime", "iso"]
