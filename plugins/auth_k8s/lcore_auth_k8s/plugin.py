"""Hook implementations of lcore-auth-k8s (filled in by its own issue)."""

from __future__ import annotations
