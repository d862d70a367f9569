"""Hook implementations of lcore-cache-postgres (filled in by its own issue)."""

from __future__ import annotations
