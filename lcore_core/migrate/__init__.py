"""`lcore migrate --from-upstream`: upstream Lightspeed Core Stack's stored data into LCore's.

The core imports the user DB; each plugin imports into the stores it owns through the
`lcore_upstream_importers` hook (see docs/migrate.md).
"""

from __future__ import annotations

from lcore_core.migrate.cache import UpstreamConversation
from lcore_core.migrate.context import Migration, TableReport
from lcore_core.migrate.source import MigrationError, UpstreamDatabase

__all__ = ["Migration", "MigrationError", "TableReport", "UpstreamConversation",
           "UpstreamDatabase"]
