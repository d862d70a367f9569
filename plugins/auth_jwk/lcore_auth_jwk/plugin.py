"""Hook implementations of lcore-auth-jwk (filled in by its own issue)."""

from __future__ import annotations
