"""Hardening found by probing LCore as an attacker would (issue 23): each test fails on the code
before its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


async def test_no_static_file_route(make_app: Any, serving: Any, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Quart's default /static/<file> served files of the working directory without auth."""
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "secret.txt").write_text("do not serve")
    (tmp_path / "secret.txt").write_text("do not serve")
    monkeypatch.chdir(tmp_path)
    app = make_app()
    assert not any(rule.rule.startswith("/static") for rule in app.url_map.iter_rules())
    async with serving(app) as client:
        for path in ("/static/secret.txt", "/static/../secret.txt"):
            response = await client.get(path)
            assert response.status_code == 404
            assert b"do not serve" not in await response.get_data()


async def test_security_headers_on_every_response(make_app: Any, serving: Any) -> None:
    async with serving(make_app()) as client:
        for path in ("/liveness", "/v1/info", "/nowhere", "/docs"):
            response = await client.get(path)
            assert response.headers["X-Content-Type-Options"] == "nosniff", path
            assert response.headers["Referrer-Policy"] == "no-referrer", path
        page = await client.get("/docs")
        assert page.mimetype == "text/html"
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # no script may run on the page


@pytest.mark.parametrize(("sent", "kept"), [
    ("abc-123_DEF.9:x", True),
    ("a" * 128, True),
    ("a" * 129, False),
    ("id with spaces", False),
    ('id"quoted', False),
    ("id\x1b[31mred", False),
    ("évident", False),
    ("-leading-dash", False),
])
async def test_client_request_ids_only_when_well_formed(make_app: Any, serving: Any, sent: str,
                                                        kept: bool) -> None:
    async with serving(make_app()) as client:
        response = await client.get("/liveness", headers={"X-Request-ID": sent})
        returned = response.headers["X-Request-ID"]
    if kept:
        assert returned == sent
    else:
        assert returned != sent and len(returned) == 32 and int(returned, 16) >= 0


DEEP = "[" * 50_000


async def test_deeply_nested_request_body_is_400(make_app: Any, serving: Any) -> None:
    async with serving(make_app()) as client:
        for body in ('{"query": ' + DEEP, '{"query": "q", "x": ' + "[" * 100 + "]" * 100 + "}"):
            response = await client.post("/v2/query", data=body,
                                         headers={"Content-Type": "application/json"})
            assert response.status_code == 400, await response.get_data(as_text=True)
            assert "nested deeper than 64" in (await response.get_json())["detail"]["cause"]


async def test_deeply_nested_identity_header_is_400(make_app: Any, serving: Any) -> None:
    import base64

    app = make_app({"authentication": {"module": "rh-identity",
                                       "rh_identity_config": {"max_header_size": 65536}}})
    deep = base64.b64encode(("{" + '"a":' * 1 + "[" * 20_000).encode()).decode()
    async with serving(app) as client:
        response = await client.get("/v1/conversations", headers={"X-RH-Identity": deep})
        assert response.status_code == 400
        assert "nested deeper" in (await response.get_json())["detail"]["cause"]


async def test_deeply_nested_mcp_headers_is_400(make_app: Any, serving: Any) -> None:
    app = make_app({"mcp_servers": [{"name": "tools", "url": "http://127.0.0.1:9/mcp"}],
                    "service": {"skip_unreachable_mcp": True}})
    async with serving(app) as client:
        response = await client.post("/v2/query", json={"query": "q"},
                                     headers={"MCP-HEADERS": '{"tools": ' + "[" * 5000})
        assert response.status_code == 400, await response.get_data(as_text=True)
        assert "nested deeper" in (await response.get_json())["detail"]["cause"]


class _HeaderRoles:
    """An authentication module of this test: user and roles from two request headers."""

    @staticmethod
    def _auth() -> Any:
        from lcore_core import AuthTuple

        class Auth:
            async def authenticate(self, request: Any) -> AuthTuple:
                roles = frozenset(filter(None, request.headers.get("X-Roles", "").split(",")))
                user = request.headers["X-User"]
                return AuthTuple(user, user, roles, "")

        return Auth()

    from lcore_core import hookimpl

    @hookimpl
    def lcore_auth_providers(self) -> list[Any]:
        from lcore_core import AuthProvider

        return [AuthProvider("test-roles", lambda settings, config: self._auth())]


async def test_renaming_others_conversations_needs_more_than_reading(
        make_app: Any, serving: Any) -> None:
    """A reader of other users' conversations could rename them (PUT); it takes upstream's
    action for acting on others' conversations (query_other_conversations)."""
    app = make_app({"authentication": {"module": "test-roles"},
                    "authorization": {"access_rules": [
                        {"role": "*", "actions": ["update_conversation", "get_conversation"]},
                        {"role": "reader", "actions": ["read_other_conversations"]},
                        {"role": "agent", "actions": ["query_other_conversations"]}]}},
                   _HeaderRoles())
    conversation = "b0b00000000000000000000000000000"
    async with serving(app) as client:
        await app.runtime.userdb.record_turn(conversation, "bob", model="m", provider="p")

        async def rename(user: str, roles: str) -> int:
            response = await client.put(f"/v1/conversations/{conversation}",
                                        json={"topic_summary": f"renamed by {user}"},
                                        headers={"X-User": user, "X-Roles": roles})
            return response.status_code

        assert await rename("eve", "reader") == 404
        assert (await app.runtime.userdb.get(conversation))["topic_summary"] is None
        assert await rename("ann", "agent") == 200
        assert await rename("bob", "") == 200
        assert (await app.runtime.userdb.get(conversation))["topic_summary"] == "renamed by bob"
