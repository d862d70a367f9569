"""ASGI entry point for multi-worker serving: the config path comes from `LCORE_CONFIG`."""

from __future__ import annotations

import os

from lcore_core.app import create_app, freeze_after_startup

app = create_app(os.environ.get("LCORE_CONFIG") or None)
freeze_after_startup(app)
