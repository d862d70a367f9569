"""The `a2a_state` section (upstream's keys): where A2A contexts and tasks are kept.

    a2a_state:                    # absent or {}: in memory (one process, lost at restart)
      sqlite: {db_path: ...}      # one SQLite file (restarts; processes sharing the file)
      postgres: {host, port, db, user, password, namespace, ssl_mode, ...}   # replicas
"""

from __future__ import annotations

from typing import Any

from marshmallow import validates_schema

# The same keys as `database.sqlite/postgres`.
from lcore_core import PostgresSchema, SQLiteSchema
from lcore_core.api import ConfigSchema, one_of_backends, optional


class A2AStateSchema(ConfigSchema):
    sqlite = optional(SQLiteSchema)
    postgres = optional(PostgresSchema)

    @validates_schema
    def _one(self, data: dict[str, Any], **_: Any) -> None:
        one_of_backends(data)
