"""Hardening found by probing LCore as an attacker would (issue 23): each test fails on the code
before its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lcore_core.testing.errors import invalid_fields


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
    conversation = "conv_" + "b0b0" * 12
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


# --- lists a client sends are bounded (issue 23, item 2) -------------------------------------

QUERY_PATHS = ("/v2/query", "/v1/query", "/query",
               "/v2/streaming_query", "/v1/streaming_query", "/streaming_query")


async def test_client_lists_that_multiply_work_are_capped(make_app: Any, serving: Any) -> None:
    """17 vector stores (a search each) or 33 attachments are a 422 naming the field, on every
    query route, before any backend call; the OpenAPI document states the caps."""
    attachment = {"attachment_type": "log", "content_type": "text/plain", "content": "x"}
    too_many = {
        "vector_store_ids": {"query": "q", "vector_store_ids": [f"vs_{i}" for i in range(17)]},
        "attachments": {"query": "q", "attachments": [
            {**attachment, "content": str(i)} for i in range(33)]},
    }
    async with serving(make_app()) as client:
        for path in QUERY_PATHS:
            for field, body in too_many.items():
                response = await client.post(path, json=body)
                assert response.status_code == 422, (path, field)
                limit = 16 if field == "vector_store_ids" else 32
                problems = invalid_fields(await response.get_json())
                assert problems[field].startswith(f"Value error, at most {limit} "), problems
        spec = await (await client.get("/openapi.json")).get_json()
    # The query request (the one schema with both lists; /v1/responses' file_search tool also
    # names vector_store_ids).
    [schema] = [s for name, s in spec["components"]["schemas"].items()
                if {"vector_store_ids", "attachments"} <= set(s.get("properties", {}))]
    assert schema["properties"]["vector_store_ids"]["maxItems"] == 16
    assert schema["properties"]["attachments"]["maxItems"] == 32


def test_client_lists_are_deduplicated() -> None:
    """A repeated store would be searched twice, a repeated attachment sent twice."""
    from lcore_core.schemas import QueryRequestSchema

    log = {"attachment_type": "log", "content_type": "text/plain", "content": "boom"}
    body = QueryRequestSchema().load({
        "query": "q", "vector_store_ids": ["docs", "kb", "docs", "kb", "docs"],
        "attachments": [log, {**log, "content": "other"}, dict(log)]})
    assert body["vector_store_ids"] == ["docs", "kb"]
    assert body["attachments"] == [log, {**log, "content": "other"}]
    # At the cap is fine; duplicates count as sent (the cap bounds the request, not the work).
    assert len(QueryRequestSchema().load(
        {"query": "q", "vector_store_ids": [f"v{i}" for i in range(16)]})["vector_store_ids"]) == 16


# --- the memory cache is bounded by bytes (issue 23, item 4) --------------------------------


async def test_memory_cache_is_bounded_by_bytes_and_keeps_no_attachment_bodies() -> None:
    """15 turns with a 4 MiB attachment each (and 1 MiB answers) keep about `max_bytes`, not
    the ~75 MB they carry; the least recently used conversations go first."""
    import gc
    import tracemalloc

    from lcore_core import CacheEntry
    from lcore_core.testing.cache_contract import cache_from_plugins

    mib = 1024 * 1024
    cache: Any = cache_from_plugins("memory", {"max_bytes": 8 * mib}, entrypoints=False)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(15):
            body = f"log line {n}\n" * (4 * mib // 12)
            await cache.insert("u", f"conv-{n}", CacheEntry(
                query=f"q{n}", response="é" * (mib // 2),  # 1 MiB of UTF-8
                attachments=[{"attachment_type": "log", "content_type": "text/plain",
                              "content": body}]))
            if n == 3:  # reading conversation 0 makes it recently used: it outlives 1 and 2
                assert await cache.get("u", "conv-0")
            del body
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.bytes_held <= 8 * mib
    assert kept < 10 * mib, f"the cache holds {kept / mib:.1f} MiB"
    listed = {c.conversation_id for c in await cache.list("u")}
    assert "conv-14" in listed and "conv-1" not in listed and len(listed) < 15
    [turn] = await cache.get("u", "conv-14")
    assert turn.attachments == [{"attachment_type": "log", "content_type": "text/plain",
                                 "size": len("log line 14\n" * (4 * mib // 12))}]


def test_memory_cache_max_bytes_is_validated(write_config: Any) -> None:
    from lcore_core import ConfigError
    from lcore_core.app import create_app
    from lcore_core.plugins import load_plugins

    config = write_config({"conversation_cache": {"type": "memory",
                                                  "memory": {"max_bytes": 1000}}})
    with pytest.raises(ConfigError, match="max_bytes"):
        create_app(config, plugins=load_plugins(entrypoints=False))


# --- no cross-origin access unless configured (issue 23, item 5) ----------------------------

PREFLIGHT = {"Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "Authorization"}


async def test_no_cross_origin_access_without_a_cors_section(make_app: Any,
                                                             serving: Any) -> None:
    """A web page on another origin cannot read a local LCore (noop auth: every caller is the
    default user) unless `service.cors` lets it."""
    evil = {"Origin": "https://evil.example"}
    async with serving(make_app()) as client:
        preflight = await client.options("/v1/conversations", headers={**evil, **PREFLIGHT})
        names = [name.lower() for name, _ in preflight.headers.items()]
        assert not [n for n in names if n.startswith("access-control-")], names
        simple = await client.get("/v1/conversations", headers=evil)
        assert simple.status_code == 200  # served (same-origin tools, curl) ...
        assert "Access-Control-Allow-Origin" not in simple.headers  # ... unreadable by the page
    ui = {"Origin": "https://ui.example"}
    opened = make_app({"service": {"cors": {"allow_origins": ["https://ui.example"]}}})
    async with serving(opened) as client:
        preflight = await client.options("/v1/conversations", headers={**ui, **PREFLIGHT})
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://ui.example"
        simple = await client.get("/v1/conversations", headers=ui)
        assert simple.headers["Access-Control-Allow-Origin"] == "https://ui.example"
        other = await client.get("/v1/conversations", headers=evil)
        assert "Access-Control-Allow-Origin" not in other.headers
    # An empty section opens it with upstream's per-key defaults (any origin).
    async with serving(make_app({"service": {"cors": {}}})) as client:
        simple = await client.get("/v1/conversations", headers=evil)
        assert simple.headers["Access-Control-Allow-Origin"] == "*"
