"""`X-Quota-*` headers on every response to an authenticated caller.

    X-Quota-Limit: daily=100000, cluster=5000000
    X-Quota-Remaining: daily=99120, cluster=4870321
    X-Quota-Reset: daily=2025-01-02T00:00:00Z, cluster=2025-02-01T00:00:00Z
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Blueprint, current_app, g

from lcore_core import LCoreError
from lcore_quota.quota import LimiterState, Quota, iso

log = logging.getLogger("lcore.quota")
STATE_KEY = "lcore-quota"


def quota_headers(states: list[LimiterState]) -> dict[str, str]:
    def join(value: Any) -> str:
        return ", ".join(f"{s.limiter.name}={value(s)}" for s in states)

    return {"X-Quota-Limit": join(lambda s: s.quota_limit),
            "X-Quota-Remaining": join(lambda s: s.available),
            "X-Quota-Reset": join(lambda s: iso(s.resets_at))}


def blueprint() -> Blueprint:
    bp = Blueprint("lcore_quota", __name__)

    @bp.after_app_request
    async def add_quota_headers(response: Any) -> Any:
        auth = getattr(g, "auth", None)
        runtime = getattr(current_app, "runtime", None)
        quota: Quota | None = runtime.state.get(STATE_KEY) if runtime is not None else None
        if auth is None or quota is None or not quota.limiters:
            return response
        try:
            states = await quota.latest_states(auth.user_id)
        except LCoreError as exc:  # the response itself already says what went wrong, if it did
            log.warning("no X-Quota headers: %s", exc.cause)
            return response
        response.headers.update(quota_headers(states))
        return response

    return bp
