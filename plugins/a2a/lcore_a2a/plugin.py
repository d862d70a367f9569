"""Hook implementations of lcore-a2a (filled in by its own issue)."""

from __future__ import annotations
