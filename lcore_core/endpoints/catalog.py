"""Models, providers, tools, shields, RAGs (mapped from Llama Stack)."""

from __future__ import annotations

from quart import Blueprint

bp = Blueprint("catalog", __name__)
