"""Hook implementations of lcore-cache-sqlite (filled in by its own issue)."""

from __future__ import annotations
