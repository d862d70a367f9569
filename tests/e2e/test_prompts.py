"""Stored prompt templates (`/v1/prompts`) against a real Llama Stack's prompts API (server and
library mode). Bodies follow upstream's OpenAPI shapes (PromptCreateRequest, ...)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.errors import invalid_fields
from lcore_core.testing.llama_stack import LlamaStackServer

from .support import Lcore, lcore_config, started

UNKNOWN = "pmpt_" + "0123456789abcdef" * 3


async def ok(response: Any) -> Any:
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()


async def error(response: Any, status: int) -> dict[str, Any]:
    text = await response.get_data(as_text=True)
    assert response.status_code == status, text
    detail: dict[str, Any] = (await response.get_json())["detail"]
    return detail


async def invalid(response: Any) -> dict[str, str]:
    """A validation 422 (upstream's FastAPI list): each failing field -> its message."""
    assert response.status_code == 422, await response.get_data(as_text=True)
    return invalid_fields(await response.get_json())


async def test_prompt_versions_lifecycle(lcore: Lcore) -> None:
    client = lcore.client
    created = await ok(await client.post("/v1/prompts", json={
        "prompt": "Summarize: {{text}}", "variables": ["text"]}))
    prompt_id = created["prompt_id"]
    # Llama Stack's own `is_default` is passed on as it says it (false in its answer to create).
    assert set(created) == {"prompt_id", "version", "is_default", "prompt", "variables"}
    assert created | {"is_default": None} == {
        "prompt_id": prompt_id, "version": 1, "is_default": None,
        "prompt": "Summarize: {{text}}", "variables": ["text"]}
    assert prompt_id.startswith("pmpt_") and len(prompt_id) == 53

    fetched = await ok(await client.get(f"/v1/prompts/{prompt_id}"))
    assert fetched | {"is_default": None} == created | {"is_default": None}
    listed = await ok(await client.get("/v1/prompts"))
    assert [p["version"] for p in listed["data"] if p["prompt_id"] == prompt_id] == [1]

    updated = await ok(await client.put(f"/v1/prompts/{prompt_id}", json={
        "prompt": "Summarize in bullet points: {{text}}", "version": 1,
        "set_as_default": True, "variables": ["text"]}))
    assert (updated["prompt_id"], updated["version"], updated["prompt"]) == (
        prompt_id, 2, "Summarize in bullet points: {{text}}")
    latest = await ok(await client.get(f"/v1/prompts/{prompt_id}"))
    assert (latest["version"], latest["prompt"]) == (2, "Summarize in bullet points: {{text}}")
    first = await ok(await client.get(f"/v1/prompts/{prompt_id}?version=1"))
    assert (first["version"], first["prompt"]) == (1, "Summarize: {{text}}")

    # An update must name the latest version; the prompt is there, the client's copy is stale.
    stale = await error(await client.put(f"/v1/prompts/{prompt_id}", json={
        "prompt": "Again: {{text}}", "version": 1, "variables": ["text"]}), 409)
    assert stale["response"] == "Prompt version is not the latest"
    # Llama Stack says "latest version '2'", OGX "latest prompt version '2'"
    assert re.search(r"latest (prompt )?version '2'", stale["cause"]), stale["cause"]

    # Without set_as_default Llama Stack makes the new version the default too.
    third = await ok(await client.put(f"/v1/prompts/{prompt_id}", json={
        "prompt": "Plain text", "version": 2}))
    assert (third["version"], third["variables"]) == (3, [])
    assert (await ok(await client.get(f"/v1/prompts/{prompt_id}")))["version"] == 3

    missing_version = await error(await client.get(f"/v1/prompts/{prompt_id}?version=9"), 404)
    assert missing_version == {"response": "Prompt not found",
                               "cause": f"Prompt with ID {prompt_id} does not exist"}

    gone = await ok(await client.delete(f"/v1/prompts/{prompt_id}"))
    assert gone == {"prompt_id": prompt_id, "deleted": True,
                    "response": "Prompt deleted successfully"}
    await error(await client.get(f"/v1/prompts/{prompt_id}"), 404)
    assert prompt_id not in [p["prompt_id"] for p in
                             (await ok(await client.get("/v1/prompts")))["data"]]
    again = await ok(await client.delete(f"/v1/prompts/{prompt_id}"))
    assert again == {"prompt_id": prompt_id, "deleted": False, "response": "Prompt not found"}


async def test_unknown_and_malformed_ids(lcore: Lcore) -> None:
    client = lcore.client
    for call in (client.get(f"/v1/prompts/{UNKNOWN}"),
                 client.put(f"/v1/prompts/{UNKNOWN}", json={"prompt": "x", "version": 1})):
        assert await error(await call, 404) == {
            "response": "Prompt not found", "cause": f"Prompt with ID {UNKNOWN} does not exist"}
    # The refusals leave the service usable: the next call is answered.
    assert "data" in await ok(await client.get("/v1/prompts"))

    for bad in ("pmpt_123", "not-a-prompt", "pmpt_" + "g" * 48):
        for call in (client.get(f"/v1/prompts/{bad}"),
                     client.put(f"/v1/prompts/{bad}", json={"prompt": "x", "version": 1}),
                     client.delete(f"/v1/prompts/{bad}")):
            assert await error(await call, 400) == {
                "response": "Invalid prompt ID format",
                "cause": f"The prompt ID {bad} has invalid format."}

    for version in ("0", "-1", "two", str(2**40)):
        fields = await invalid(await client.get(f"/v1/prompts/{UNKNOWN}?version={version}"))
        assert list(fields) == ["version"]


@pytest.mark.parametrize(("body", "field"), [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x" * 65_537}, "prompt"),
    ({"prompt": "x", "variables": [f"v{i}" for i in range(65)]}, "variables"),
    ({"prompt": "x", "variables": ["v" * 129]}, "variables"),
    ({"prompt": "x", "variables": "text"}, "variables"),
    ({"prompt": "Hello {{name}} from {{ place }}", "variables": ["name"]}, "variables"),
    ({"prompt": "x", "unknown": 1}, "unknown"),
])
async def test_invalid_create_bodies_are_422(lcore: Lcore, body: dict[str, Any],
                                             field: str) -> None:
    before = len((await ok(await lcore.client.get("/v1/prompts")))["data"])
    fields = await invalid(await lcore.client.post("/v1/prompts", json=body))
    assert field in {name.split(".")[0] for name in fields}, fields
    assert len((await ok(await lcore.client.get("/v1/prompts")))["data"]) == before


async def test_undeclared_variable_is_named(lcore: Lcore) -> None:
    fields = await invalid(await lcore.client.post("/v1/prompts", json={
        "prompt": "Hello {{name}} from {{ place }}", "variables": ["name"]}))
    assert "undeclared variables ['place']" in fields["variables"]


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "x"}, "version"),
    ({"prompt": "x", "version": 0}, "version"),
    ({"prompt": "x", "version": "one"}, "version"),
    ({"prompt": "x", "version": 1, "set_as_default": "maybe"}, "set_as_default"),
    ({"version": 1}, "prompt"),
])
async def test_invalid_update_bodies_are_422(lcore: Lcore, body: dict[str, Any],
                                             field: str) -> None:
    fields = await invalid(await lcore.client.put(f"/v1/prompts/{UNKNOWN}", json=body))
    assert field in {name.split(".")[0] for name in fields}, fields


async def test_version_as_a_string_is_read_as_upstream_reads_it(lcore: Lcore) -> None:
    """Upstream's `version: int` is pydantic's lax integer: "1" is version 1, so the update
    reaches the (unknown) prompt instead of failing validation."""
    detail = await error(await lcore.client.put(f"/v1/prompts/{UNKNOWN}", json={
        "prompt": "x", "version": "1"}), 404)
    assert detail["response"] == "Prompt not found"


async def test_llama_stack_down_is_503(tmp_path: Path, own_stack: LlamaStackServer) -> None:
    app = create_app(lcore_config(tmp_path / "lcore", "server", own_stack.url),
                     plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        client = test_app.test_client()
        prompt = await ok(await client.post("/v1/prompts", json={"prompt": "Hi"}))
        prompt_id = prompt["prompt_id"]
        own_stack.kill()
        calls = [client.get("/v1/prompts"), client.get(f"/v1/prompts/{prompt_id}"),
                 client.post("/v1/prompts", json={"prompt": "Hi"}),
                 client.put(f"/v1/prompts/{prompt_id}", json={"prompt": "Ho", "version": 1}),
                 client.delete(f"/v1/prompts/{prompt_id}")]
        for call in calls:
            detail = await error(await call, 503)
            assert detail["response"] == "Unable to connect to OGX"
        await asyncio.to_thread(own_stack.start)
        assert (await ok(await client.get(f"/v1/prompts/{prompt_id}")))["prompt"] == "Hi"


READS = [("GET", "/v1/prompts"), ("GET", f"/v1/prompts/{UNKNOWN}")]
MANAGES = [("POST", "/v1/prompts"), ("PUT", f"/v1/prompts/{UNKNOWN}"),
           ("DELETE", f"/v1/prompts/{UNKNOWN}")]
SAVED = [("GET", "/v1/saved-prompts"), ("POST", "/v1/saved-prompts"),
         ("DELETE", "/v1/saved-prompts/8c4a4e5e-3d42-4c59-9a0c-6a7fd0c6f0a1")]
CONFIG = [("GET", "/v1/saved-prompts/config"), ("GET", "/v1/config")]
ROUTES = {"read_prompts": READS, "manage_prompts": MANAGES, "manage_saved_prompts": SAVED,
          "get_config": CONFIG}


@pytest.mark.parametrize("withheld", sorted(ROUTES))
async def test_each_route_needs_its_action(tmp_path: Path, llama_stack_server: Any,
                                           withheld: str) -> None:
    granted = [a for a in ROUTES if a != withheld]
    config = lcore_config(tmp_path, "server", llama_stack_server.url, authorization={
        "always_apply_access_rules": True,  # noop's callers are not judged otherwise
        "access_rules": [{"role": "*", "actions": granted}]})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        client = test_app.test_client()
        for action, routes in ROUTES.items():
            for method, path in routes:
                # No body: a granted route answers 4xx/2xx for it, never 403.
                response = await client.open(path, method=method)
                if action == withheld:
                    detail = await error(response, 403)
                    assert detail["response"] == \
                        "User does not have permission to access this endpoint"
                else:
                    assert response.status_code != 403, (method, path)
