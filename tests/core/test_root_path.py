"""`service.root_path`: behind a proxy that forwards a path prefix, `<root_path>/...` is served
as `/...`; the unprefixed paths keep working, as under upstream's FastAPI."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

ROOT = "/api/lightspeed"


async def test_prefixed_and_unprefixed_paths_are_served(make_app: Any) -> None:
    client = make_app({"service": {"root_path": ROOT}}).test_client()
    for path in (f"{ROOT}/v1/liveness", "/v1/liveness", f"{ROOT}/health", "/health"):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert await response.get_json() == {"alive": True}
    # Only a whole path segment is the prefix.
    assert (await client.get(f"{ROOT}x/v1/liveness")).status_code == 404
    assert (await client.get("/api/v1/liveness")).status_code == 404
    # A request that gets nowhere is still LCore's JSON error.
    missing = await client.get(f"{ROOT}/v1/nothing-here")
    assert missing.status_code == 404
    assert (await missing.get_json())["detail"]["response"] == "Not found"


async def test_without_root_path_the_prefix_is_not_a_route(make_app: Any) -> None:
    client = make_app().test_client()
    assert (await client.get(f"{ROOT}/v1/liveness")).status_code == 404
    document = await (await client.get("/openapi.json")).get_json()
    assert "servers" not in document


async def test_a_post_under_the_prefix_reaches_its_view(make_app: Any) -> None:
    client = make_app({"service": {"root_path": ROOT}}).test_client()
    # A body that fails validation proves the query view itself answered (not a 404 or 405).
    response = await client.post(f"{ROOT}/v1/query", json={"query": ""})
    assert response.status_code == 422, await response.get_data(as_text=True)


async def test_openapi_names_the_prefix_as_its_server(make_app: Any) -> None:
    client = make_app({"service": {"root_path": ROOT}}).test_client()
    for path in (f"{ROOT}/openapi.json", "/openapi.json"):
        document = await (await client.get(path)).get_json()
        validate(document)
        assert document["servers"] == [{"url": ROOT}]
        # The paths are the routes; a client joins them to the server URL.
        assert "/v1/info" in document["paths"]
        assert not any(p.startswith(ROOT) for p in document["paths"])
    page = await (await client.get(f"{ROOT}/docs")).get_data(as_text=True)
    # A relative link: from <root>/docs it reaches <root>/openapi.json.
    assert 'href="openapi.json"' in page


async def test_metrics_label_prefixed_requests_by_their_route(make_app: Any) -> None:
    client = make_app({"service": {"root_path": ROOT}}).test_client()
    assert (await client.get(f"{ROOT}/v1/liveness")).status_code == 200
    text = await (await client.get(f"{ROOT}/metrics")).get_data(as_text=True)
    assert 'ls_rest_api_calls_total{path="/v1/liveness",status_code="200"} 1.0' in text
