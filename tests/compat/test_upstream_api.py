"""Upstream's API, route by route, in LCore's OpenAPI document.

`ROUTES` lists every method and path of upstream's openapi.json (docs/devel_doc/openapi.json at
upstream commit cd1a0484, 2026-08-21; written down here, the file itself is not copied): None
where LCore serves it, else why not. In CI the table is checked against LCore: a served route
must be in LCore's document (as a path or one of its `x-aliases`), a listed gap must not be
(so the list only shrinks).

With a checkout of upstream (`LCORE_UPSTREAM_CHECKOUT`, a work tree or a bare mirror), the walk
goes further: the table must hold exactly upstream's routes, and for each served one
- every property of upstream's JSON request body is one LCore's request schema knows, and LCore
  requires nothing upstream does not;
- the success status is the same, and every property of upstream's JSON answer is in LCore's;
each difference being listed in `FIELD_EXCEPTIONS` with its reason.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins

METHODS = ("get", "post", "put", "delete", "patch")
NOT_YET = "not served yet (issue 22)"

ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/"): None,
    ("GET", "/v1/info"): None,
    ("GET", "/v1/models"): None,
    ("GET", "/v1/tools"): None,
    ("GET", "/v1/mcp-auth/client-options"): None,
    ("GET", "/v1/mcp-servers"): None,
    ("POST", "/v1/mcp-servers"): None,
    ("DELETE", "/v1/mcp-servers/{name}"): None,
    ("GET", "/v1/shields"): None,
    ("GET", "/v1/skills"): None,
    ("GET", "/v1/providers"): None,
    ("GET", "/v1/providers/{provider_id}"): None,
    ("GET", "/v1/prompts"): None,
    ("POST", "/v1/prompts"): None,
    ("GET", "/v1/prompts/{prompt_id}"): None,
    ("PUT", "/v1/prompts/{prompt_id}"): None,
    ("DELETE", "/v1/prompts/{prompt_id}"): None,
    ("GET", "/v1/rags"): None,
    ("GET", "/v1/rags/{rag_id}"): None,
    ("GET", "/v1/vector-stores"): None,
    ("POST", "/v1/vector-stores"): None,
    ("GET", "/v1/vector-stores/{vector_store_id}"): None,
    ("PUT", "/v1/vector-stores/{vector_store_id}"): None,
    ("DELETE", "/v1/vector-stores/{vector_store_id}"): None,
    ("POST", "/v1/files"): None,
    ("POST", "/v1/vector-stores/{vector_store_id}/files"): None,
    ("GET", "/v1/vector-stores/{vector_store_id}/files"): None,
    ("GET", "/v1/vector-stores/{vector_store_id}/files/{file_id}"): None,
    ("DELETE", "/v1/vector-stores/{vector_store_id}/files/{file_id}"): None,
    ("POST", "/v1/query"): None,
    ("POST", "/v1/streaming_query"): None,
    ("POST", "/v1/streaming_query/interrupt"): None,
    ("GET", "/v1/config"): None,
    ("GET", "/v1/saved-prompts/config"): None,
    ("GET", "/v1/saved-prompts"): None,
    ("POST", "/v1/saved-prompts"): None,
    ("DELETE", "/v1/saved-prompts/{prompt_id}"): None,
    ("POST", "/v1/feedback"): None,
    ("GET", "/v1/feedback/status"): None,
    ("PUT", "/v1/feedback/status"): None,
    ("GET", "/v1/conversations"): None,
    ("GET", "/v1/conversations/{conversation_id}"): None,
    ("DELETE", "/v1/conversations/{conversation_id}"): None,
    ("PUT", "/v1/conversations/{conversation_id}"): None,
    ("GET", "/v2/conversations"): None,
    ("GET", "/v2/conversations/{conversation_id}"): None,
    ("DELETE", "/v2/conversations/{conversation_id}"): None,
    ("PUT", "/v2/conversations/{conversation_id}"): None,
    ("POST", "/v1/responses"): None,
    ("POST", "/v1/infer"): None,
    ("GET", "/readiness"): None,
    ("GET", "/liveness"): None,
    ("POST", "/authorized"): None,
    ("GET", "/metrics"): None,
    ("GET", "/.well-known/agent-card.json"): None,
    ("GET", "/.well-known/agent.json"): None,
    ("GET", "/a2a"): None,
    ("POST", "/a2a"): None,
    ("GET", "/a2a/health"): None,
}

# (method, path, "request" or "response", property) -> why LCore differs on purpose.
FIELD_EXCEPTIONS: dict[tuple[str, str, str, str], str] = {}


def _lcore_document() -> dict[str, Any]:
    """LCore's OpenAPI document with every installed plugin (A2A, quota...)."""
    import asyncio
    import tempfile

    import yaml

    work = Path(tempfile.mkdtemp(prefix="lcore-openapi-"))
    config = work / "lightspeed-stack.yaml"
    config.write_text(yaml.safe_dump({
        "name": "openapi", "llama_stack": {"url": "http://127.0.0.1:9"},
        "user_data_collection": {"feedback_enabled": True,
                                 "feedback_storage": str(work / "feedback")},
        "database": {"sqlite": {"db_path": str(work / "user.db")}}}))
    app = create_app(config, plugins=load_plugins())

    async def fetch() -> dict[str, Any]:
        return await (await app.test_client().get("/openapi.json")).get_json()

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def lcore_document() -> dict[str, Any]:
    return _lcore_document()


def operations(document: dict[str, Any], *, aliases: bool) -> dict[tuple[str, str], Any]:
    """(METHOD, path) -> operation; with `aliases`, also under each of its `x-aliases`."""
    found = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            found[(method.upper(), path)] = operation
            for alias in operation.get("x-aliases", []) if aliases else ():
                found.setdefault((method.upper(), alias), operation)
    return found


def test_served_routes_are_in_lcore_and_gaps_are_not(lcore_document: dict[str, Any]) -> None:
    served = operations(lcore_document, aliases=True)
    missing = [route for route, gap in ROUTES.items() if gap is None and route not in served]
    assert missing == [], f"served according to ROUTES but not in LCore: {missing}"
    now_served = [route for route, gap in ROUTES.items() if gap and route in served]
    assert now_served == [], f"served now: set them to None in ROUTES: {now_served}"


# --- against upstream's own document -----------------------------------------------------------


def upstream_document(root: Path) -> dict[str, Any]:
    name = "docs/devel_doc/openapi.json"
    if (root / "HEAD").is_file() and (root / "objects").is_dir():  # a bare mirror
        text = subprocess.run(["git", "--git-dir", str(root), "show", f"HEAD:{name}"],
                              capture_output=True, text=True, check=True).stdout
        return json.loads(text)
    return json.loads((root / name).read_text(encoding="utf-8"))


def resolve(document: dict[str, Any], schema: Any) -> dict[str, Any]:
    """`schema` with $refs followed, allOf merged and a nullable anyOf/oneOf unwrapped."""
    while isinstance(schema, dict) and "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    if not isinstance(schema, dict):
        return {}
    if "allOf" in schema:
        merged: dict[str, Any] = {"properties": {}, "required": []}
        for part in schema["allOf"]:
            part = resolve(document, part)
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return merged
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key, []) if o.get("type") != "null"]
        if len(options) == 1:
            return resolve(document, options[0])
    return schema


def request_schema(document: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {})
    json_body = content.get("application/json")
    return None if json_body is None else resolve(document, json_body.get("schema", {}))


def success(document: dict[str, Any], operation: dict[str, Any]) -> tuple[str | None, Any]:
    """The first 2xx status and its JSON answer's schema (None when not JSON)."""
    for status, answer in sorted(operation.get("responses", {}).items()):
        if status.startswith("2"):
            body = answer.get("content", {}).get("application/json")
            return status, None if body is None else resolve(document, body.get("schema", {}))
    return None, None


def differences(upstream: dict[str, Any], lcore: dict[str, Any]) -> list[str]:
    """What a client written for upstream would find different in LCore, route by route."""
    found = []
    served = operations(lcore, aliases=True)
    for (method, path), theirs in sorted(operations(upstream, aliases=False).items()):
        if ROUTES.get((method, path)) is not None:
            continue
        ours = served[(method, path)]

        def note(kind: str, name: str, what: str, route: tuple[str, str] = (method, path)
                 ) -> None:
            if (*route, kind, name) not in FIELD_EXCEPTIONS:
                found.append(f"{route[0]} {route[1]} {kind} {name}: {what}")

        wanted = request_schema(upstream, theirs)
        if wanted is not None and wanted.get("properties"):
            given = request_schema(lcore, ours)
            if given is None:
                note("request", "*", "LCore takes no JSON body")
            else:
                for name in sorted(set(wanted["properties"]) - set(given.get("properties", {}))):
                    note("request", name, "unknown to LCore")
                for name in sorted(set(given.get("required", []))
                                   - set(wanted.get("required", []))):
                    note("request", name, "required by LCore only")
        status, answer = success(upstream, theirs)
        our_status, our_answer = success(lcore, ours)
        if status != our_status:
            note("response", "status", f"upstream {status}, LCore {our_status}")
        if answer and answer.get("properties"):
            if not our_answer:
                note("response", "*", "LCore documents no JSON answer")
                continue
            for name in sorted(set(answer["properties"]) - set(our_answer.get("properties", {}))):
                note("response", name, "missing in LCore's answer")
    return found


@pytest.mark.skipif(not os.environ.get("LCORE_UPSTREAM_CHECKOUT"),
                    reason="set LCORE_UPSTREAM_CHECKOUT to a checkout of upstream")
def test_upstream_openapi_walk(lcore_document: dict[str, Any]) -> None:
    upstream = upstream_document(Path(os.environ["LCORE_UPSTREAM_CHECKOUT"]))
    theirs = set(operations(upstream, aliases=False))
    assert theirs - set(ROUTES) == set(), "upstream routes missing from ROUTES"
    assert set(ROUTES) - theirs == set(), "ROUTES lists routes upstream no longer has"
    assert differences(upstream, lcore_document) == []


def test_the_walk_finds_differences(lcore_document: dict[str, Any]) -> None:
    """The comparison itself, on a small document in upstream's style (so it can fail)."""
    upstream = {
        "components": {"schemas": {
            "Req": {"properties": {"query": {}, "brand_new": {}}, "required": ["query"]},
            "Ans": {"properties": {"response": {}, "never_sent": {}}}}},
        "paths": {"/v1/query": {"post": {
            "requestBody": {"content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Req"}}}},
            "responses": {"200": {"content": {"application/json": {
                "schema": {"anyOf": [{"$ref": "#/components/schemas/Ans"},
                                     {"type": "null"}]}}}}}}}}}
    assert differences(upstream, lcore_document) == [
        "POST /v1/query request brand_new: unknown to LCore",
        "POST /v1/query response never_sent: missing in LCore's answer"]
