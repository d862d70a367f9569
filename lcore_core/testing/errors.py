"""Reading LCore's error bodies in tests.

Two shapes reach clients, as upstream answers them: `{"detail": {"response", "cause"}}` for
errors the service decides, and a list of `{"type", "loc", "msg"}` under `detail` for a body or
query string that fails validation (FastAPI's 422)."""

from __future__ import annotations

from typing import Any


def invalid_fields(body: Any) -> dict[str, str]:
    """For a validation 422: each failing field as `a.b.0.c` (without `body`/`query`) -> its
    message. Fails the test when the body is not FastAPI's list."""
    detail = body["detail"]
    assert isinstance(detail, list) and detail, body
    fields = {}
    for entry in detail:
        assert {"type", "loc", "msg"} <= entry.keys(), entry
        assert entry["loc"][0] in ("body", "query", "path"), entry
        fields[".".join(str(part) for part in entry["loc"][1:])] = entry["msg"]
    return fields


def error_text(body: Any) -> str:
    """One line for either shape: `response: cause`, or `field: message; ...`."""
    detail = body["detail"]
    if isinstance(detail, list):
        return "; ".join(f"{field or 'body'}: {msg}"
                         for field, msg in invalid_fields(body).items())
    assert isinstance(detail["response"], str) and isinstance(detail["cause"], str), body
    return f"{detail['response']}: {detail['cause']}"
