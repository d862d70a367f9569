"""The app as a client sees it: error bodies, middleware, system endpoints, plugin hooks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from marshmallow import Schema, fields
from openapi_spec_validator import validate
from quart import Blueprint, jsonify, request

from lcore_core import ReadinessCheck, authorize, doc, hookimpl, route
from lcore_core.testing.llm import SCRIPTED_VERSION

bp = Blueprint("inline_test", __name__)


class ItemSchema(Schema):
    item_id = fields.String(required=True)


@route(bp, "/v1/test/items/<item_id>")
@doc(summary="One test item", tags=["test"], responses={200: ItemSchema})
@authorize("info")
async def item(item_id: str) -> Any:
    return jsonify({"item_id": item_id})


@bp.post("/v1/test/echo")
async def echo() -> Any:
    return jsonify({"size": len(await request.get_data())})


@bp.get("/v1/test/boom")
async def boom() -> Any:
    raise RuntimeError("secret-internal-detail in boom()")


class Inline:
    """A plugin with routes, a readiness check and lifecycle hooks that records its calls."""

    def __init__(self, ready_reason: str | None = None) -> None:
        self.ready_reason = ready_reason
        self.calls: list[str] = []

    @hookimpl
    def lcore_blueprints(self) -> list[Blueprint]:
        return [bp]

    @hookimpl
    def lcore_readiness(self) -> list[ReadinessCheck]:
        async def check() -> str | None:
            if self.ready_reason:
                raise ConnectionError(self.ready_reason)
            return None

        return [ReadinessCheck("inline-backend", check)]

    @hookimpl
    async def lcore_startup(self, runtime: Any) -> None:
        self.calls.append("startup")
        runtime.state["inline"] = "started"

    @hookimpl
    def lcore_shutdown(self, runtime: Any) -> None:
        self.calls.append(f"shutdown:{runtime.state.get('inline')}")


def assert_error_body(body: Any) -> None:
    assert set(body) == {"detail"}
    assert isinstance(body["detail"]["response"], str) and body["detail"]["response"]
    assert isinstance(body["detail"]["cause"], str) and body["detail"]["cause"]


API_KEY = {"authentication": {"module": "api-key-token",
                              "api_key_config": {"api_key": "good-key-123"}}}


# --- error bodies ---------------------------------------------------------------------------


async def test_404_is_json(make_app: Any) -> None:
    response = await make_app().test_client().get("/no/such/path")
    assert response.status_code == 404
    body = await response.get_json()
    assert_error_body(body)
    assert body["detail"]["response"] == "Not found"


async def test_405_is_json_with_allow(make_app: Any) -> None:
    response = await make_app().test_client().delete("/v1/info")
    assert response.status_code == 405
    assert_error_body(await response.get_json())
    assert "GET" in response.headers["Allow"]


async def test_413_body_over_max_request_size(make_app: Any) -> None:
    client = make_app({"service": {"max_request_size": 2048}}, Inline()).test_client()
    small = await client.post("/v1/test/echo", data=b"x" * 1000)
    assert small.status_code == 200
    response = await client.post("/v1/test/echo", data=b"x" * 4096)
    assert response.status_code == 413
    body = await response.get_json()
    assert_error_body(body)
    assert "2048" in body["detail"]["cause"]


async def test_unexpected_exception_is_500_json_without_traceback(make_app: Any) -> None:
    client = make_app({}, Inline()).test_client()
    response = await client.get("/v1/test/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    text = await response.get_data(as_text=True)
    assert "Traceback" not in text
    assert "secret-internal-detail" not in text
    assert "boom()" not in text
    body = await response.get_json()
    assert_error_body(body)
    assert "boom-1" in body["detail"]["cause"]  # the request id to find it in the log


async def test_401_api_key_missing_and_wrong(make_app: Any) -> None:
    client = make_app(API_KEY).test_client()
    # /v1/liveness needs the same action as /v1/info without asking Llama Stack anything.
    missing = await client.get("/v1/liveness")
    assert missing.status_code == 401
    assert_error_body(await missing.get_json())
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = await client.get("/v1/liveness", headers={"Authorization": "Bearer bad-key-123"})
    assert wrong.status_code == 401
    assert_error_body(await wrong.get_json())
    good = await client.get("/v1/liveness", headers={"Authorization": "Bearer good-key-123"})
    assert good.status_code == 200


async def test_403_without_the_action(make_app: Any) -> None:
    # noop's callers are judged by the rules only when asked to (upstream never judges them).
    rules = {"authorization": {"always_apply_access_rules": True,
                               "access_rules": [{"role": "*", "actions": ["get_models"]}]}}
    client = make_app(rules).test_client()
    response = await client.get("/v1/liveness")
    assert response.status_code == 403
    body = await response.get_json()
    assert_error_body(body)
    assert "is not authorized to access this endpoint" in body["detail"]["cause"]
    granted = {"authorization": {"always_apply_access_rules": True,
                                 "access_rules": [{"role": "*", "actions": ["info"]}]}}
    assert (await make_app(granted).test_client().get("/v1/liveness")).status_code == 200


# --- middleware -----------------------------------------------------------------------------


async def test_request_id_echoed_and_generated(make_app: Any) -> None:
    client = make_app().test_client()
    echoed = await client.get("/health", headers={"X-Request-ID": "my-request-42"})
    assert echoed.headers["X-Request-ID"] == "my-request-42"
    first = (await client.get("/health")).headers["X-Request-ID"]
    second = (await client.get("/health")).headers["X-Request-ID"]
    assert first and second and first != second
    # An unusable id (too long) is replaced, not echoed.
    replaced = await client.get("/health", headers={"X-Request-ID": "x" * 500})
    assert replaced.headers["X-Request-ID"] != "x" * 500
    # Error responses carry it too.
    assert (await client.get("/nope", headers={"X-Request-ID": "e-1"})).headers[
        "X-Request-ID"] == "e-1"


async def test_cors_preflight_returns_configured_headers(make_app: Any) -> None:
    cors = {"service": {"cors": {"allow_origins": ["https://ui.example"],
                                 "allow_methods": ["GET", "POST"],
                                 "allow_headers": ["X-Custom", "Authorization"]}}}
    client = make_app(cors).test_client()
    preflight = {"Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "X-Custom"}
    response = await client.options("/v1/info", headers={"Origin": "https://ui.example",
                                                          **preflight})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    assert "x-custom" in response.headers["Access-Control-Allow-Headers"].lower()
    methods = response.headers["Access-Control-Allow-Methods"]
    assert "GET" in methods and "POST" in methods
    other = await client.options("/v1/info", headers={"Origin": "https://evil.example",
                                                       **preflight})
    assert "Access-Control-Allow-Origin" not in other.headers


# --- system endpoints -----------------------------------------------------------------------


async def test_readiness_ok_then_503_naming_failing_plugin(make_app: Any, serving: Any) -> None:
    async with serving(make_app({}, Inline())) as client:
        response = await client.get("/readiness")
        body = await response.get_json()
        assert response.status_code == 200, body
        assert body["ready"] is True
        assert {p["provider_id"] for p in body["providers"]} >= {"inline-backend", "cache"}
    async with serving(make_app({}, Inline("inline backend is down"))) as client:
        response = await client.get("/readiness")
        assert response.status_code == 503
        body = await response.get_json()
        assert body["ready"] is False
        assert "inline-backend" in body["reason"]
        failing = [p for p in body["providers"] if p["status"] != "ok"]
        assert [p["provider_id"] for p in failing] == ["inline-backend"]
        # The probe may be unauthenticated: the error type, not its message (in the log).
        assert failing[0]["message"] == "ConnectionError; the details are in the service log"


async def test_info_lists_plugins(make_app: Any, serving: Any) -> None:
    async with serving(make_app({}, Inline())) as client:
        response = await client.get("/v1/info")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["name"] == "LCore test"
    assert body["llama_stack_version"] == SCRIPTED_VERSION  # the stand-in's GET /v1/version
    by_name = {p["name"]: p for p in body["plugins"]}
    assert by_name["lcore_core.builtins"]["distribution"] == "lcore-core"
    assert "lcore_auth_providers" in by_name["lcore_core.builtins"]["hooks"]
    inline = [p for p in body["plugins"] if "lcore_readiness" in p["hooks"]
              and "lcore_startup" in p["hooks"]]
    assert len(inline) == 1 and inline[0]["distribution"] == "(given)"


async def test_metrics_count_by_path_template(make_app: Any) -> None:
    client = make_app({}, Inline()).test_client()
    for item_id in ("a", "b", "c"):
        assert (await client.get(f"/v1/test/items/{item_id}")).status_code == 200
    await client.get("/no/such/path")
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'ls_rest_api_calls_total{path="/v1/test/items/<item_id>",status_code="200"} 3.0' \
        in text
    assert 'path="<unmatched>",status_code="404"' in text
    assert "/v1/test/items/a" not in text


async def test_openapi_valid_and_documents_plugin_routes(make_app: Any) -> None:
    client = make_app({}, Inline()).test_client()
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = await response.get_json()
    validate(document)
    operation = document["paths"]["/v1/test/items/{item_id}"]["get"]
    assert operation["summary"] == "One test item"
    assert operation["x-lcore-action"] == "info"
    assert {"401", "403", "200"} <= set(operation["responses"])
    assert "/health" in document["paths"] and "/v1/info" in document["paths"]
    # Undocumented views stay out of the document.
    assert "/v1/test/boom" not in document["paths"]


async def test_docs_page_is_html(make_app: Any) -> None:
    response = await make_app({}, Inline()).test_client().get("/docs")
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")
    text = await response.get_data(as_text=True)
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "/v1/test/items/{item_id}" in text


async def test_startup_and_shutdown_hooks_called(make_app: Any, serving: Any) -> None:
    plugin = Inline()
    app = make_app({}, plugin)
    assert plugin.calls == []
    async with serving(app) as client:
        assert plugin.calls == ["startup"]
        assert (await client.get("/health")).status_code == 200
    assert plugin.calls == ["startup", "shutdown:started"]


async def test_skip_for_health_probes(make_app: Any, serving: Any) -> None:
    async with serving(make_app(API_KEY)) as client:
        assert (await client.get("/readiness")).status_code == 401
        assert (await client.get("/health")).status_code == 401
    skip = {"authentication": {**API_KEY["authentication"], "skip_for_health_probes": True}}
    async with serving(make_app(skip)) as client:
        assert (await client.get("/readiness")).status_code == 200
        assert (await client.get("/health")).status_code == 200
        # Only the probes are let through.
        assert (await client.get("/v1/info")).status_code == 401


async def test_concurrent_startup_steps_fail_as_in_order() -> None:
    """The first failed step in order is reported, even if a later one failed sooner; the steps
    after it are cancelled and none is left running."""
    from lcore_core.app import _concurrently

    events: list[str] = []

    async def step(name: str, delay: float, error: str | None = None) -> None:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            events.append(f"{name} cancelled")
            raise
        events.append(name)
        if error:
            raise RuntimeError(error)

    with pytest.raises(RuntimeError, match="user DB down"):
        await _concurrently(step("userdb", 0.05, "user DB down"),
                            step("llama", 0.0, "Llama Stack down"), step("mcp", 10))
    assert events == ["llama", "userdb", "mcp cancelled"]

    events.clear()
    await _concurrently(step("a", 0.02), step("b", 0.0))
    assert events == ["b", "a"]


async def test_index_page_links_to_the_docs(make_app: Any, serving: Any) -> None:
    """Upstream serves an HTML index page at `/` (action info)."""
    async with serving(make_app()) as client:
        response = await client.get("/")
        page = await response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "<h1>LCore test</h1>" in page and 'href="docs"' in page


async def test_openapi_error_answers_have_their_shape(make_app: Any) -> None:
    """Found by the deep fuzz: errors described in words documented no body, and `POST
    /v1/files` forbade the form fields it ignores (an OpenAI client's `purpose`)."""
    document = await (await make_app({}, Inline()).test_client().get("/openapi.json")).get_json()
    bare = [(method, path, status) for path, item in document["paths"].items()
            for method, operation in item.items()
            for status, answer in operation["responses"].items()
            if int(status) >= 400 and "application/json" not in answer.get("content", {})]
    assert bare == []
    files = document["paths"]["/v1/files"]["post"]
    assert files["responses"]["413"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    upload = files["requestBody"]["content"]["multipart/form-data"]["schema"]
    name = upload["$ref"].rsplit("/", 1)[-1]
    assert document["components"]["schemas"][name].get("additionalProperties", True) is not False


async def test_openapi_documents_the_streams(make_app: Any) -> None:
    """Found by the deep fuzz: `POST /v1/responses` with `stream: true` answered
    text/event-stream, which the document did not list (upstream's does)."""
    document = await (await make_app({}, Inline()).test_client().get("/openapi.json")).get_json()
    validate(document)
    answer = document["paths"]["/v1/responses"]["post"]["responses"]["200"]["content"]
    assert answer == {
        "application/json": {"schema": {"$ref": "#/components/schemas/ResponsesResponse"}},
        "text/event-stream": {"schema": {"type": "string"}}}
    answer = document["paths"]["/v2/streaming_query"]["post"]["responses"]["200"]["content"]
    assert answer == {"text/event-stream": {"schema": {"type": "string"}}}
    errors = document["paths"]["/v2/streaming_query"]["post"]["responses"]["404"]["content"]
    assert list(errors) == ["application/json"]
