"""Feedback, feedback status, effective config and `/authorized`."""

from __future__ import annotations

from quart import Blueprint

bp = Blueprint("feedback", __name__)
