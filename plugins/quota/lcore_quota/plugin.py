"""Hook implementations of lcore-quota (filled in by its own issue)."""

from __future__ import annotations
