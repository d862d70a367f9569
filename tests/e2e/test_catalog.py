"""Catalog endpoints (models, providers, tools, shields, RAGs) against a real Llama Stack."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llama_stack import (
    EMBEDDING_MODEL_ID,
    INFERENCE_PROVIDER_ID,
    LLM_MODEL_ID,
    SHIELD_ID,
    free_port,
)

from .support import MODES, backend_for, backend_serves, llama_section

pytestmark = pytest.mark.e2e

MCP_NAME = "catalog-weather"
# Quart's test app allows 6 s for start-up; library mode can need more on a loaded machine.
STARTUP_TIMEOUT_S = 120
MCP_URL = "http://127.0.0.1:9/mcp"


def write_config(workdir: Path, llama_stack: dict[str, Any], **extra: Any) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "lcore-catalog-e2e",
        "llama_stack": llama_stack,
        "database": {"sqlite": {"db_path": str(workdir / "user.db")}},
        "mcp_servers": [{"name": MCP_NAME, "url": MCP_URL}],
        # The MCP server is only listed here, never running.
        "service": {"skip_unreachable_mcp": True},
        **extra,
    }
    path = workdir / "lightspeed-stack.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Started:
    app: Any
    client: Any
    mode: str


@pytest.fixture(scope="module", params=MODES)
async def lcore(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                llama_stack_server: Any, llama_stack_library_config: Path,
                ) -> AsyncIterator[Started]:
    """One started LCore per Llama Stack mode, shared by this module's tests."""
    mode = request.param
    llama = llama_section(mode, backend_for(request, mode, llama_stack_server,
                                            llama_stack_library_config))
    path = write_config(tmp_path_factory.mktemp(f"catalog-{mode}"), llama)
    app = create_app(path, plugins=load_plugins(entrypoints=False))
    async with app.test_app_class(app, startup_timeout=STARTUP_TIMEOUT_S) as test_app:
        yield Started(app, test_app.test_client(), mode)


async def get_json(lcore: Started, path: str, status: int = 200) -> Any:
    response = await lcore.client.get(path)
    body = await response.get_json()
    assert response.status_code == status, body
    return body


async def test_models_lists_the_llm_and_the_embedding_model(lcore: Started) -> None:
    body = await get_json(lcore, "/v1/models")
    by_id = {m["identifier"]: m for m in body["models"]}
    llm, embedding = by_id[LLM_MODEL_ID], by_id[EMBEDDING_MODEL_ID]
    assert llm["model_type"] == llm["api_model_type"] == "llm"
    assert llm["provider_id"] == INFERENCE_PROVIDER_ID
    assert llm["provider_resource_id"] == LLM_MODEL_ID.split("/", 1)[1]
    assert llm["type"] == "model"
    assert embedding["model_type"] == "embedding"
    assert embedding["metadata"]["embedding_dimension"] > 0
    assert "model_type" not in embedding["metadata"]
    # the old path serves the same document
    assert await get_json(lcore, "/models") == body


async def test_models_filter_by_model_type(lcore: Started) -> None:
    llms = (await get_json(lcore, "/v1/models?model_type=llm"))["models"]
    assert [m["identifier"] for m in llms] == [LLM_MODEL_ID]
    embeddings = (await get_json(lcore, "/v1/models?model_type=embedding"))["models"]
    assert [m["identifier"] for m in embeddings] == [EMBEDDING_MODEL_ID]
    assert (await get_json(lcore, "/v1/models?model_type=nothing"))["models"] == []


async def test_providers_grouped_by_api(lcore: Started) -> None:
    providers = (await get_json(lcore, "/v1/providers"))["providers"]
    assert {"provider_id": INFERENCE_PROVIDER_ID,
            "provider_type": "remote::openai"} in providers["inference"]
    assert {"provider_id": "faiss", "provider_type": "inline::faiss"} in providers["vector_io"]
    if lcore.app.runtime.llama.has_safety_api:
        assert {"provider_id": "llama-guard",
                "provider_type": "inline::llama-guard"} in providers["safety"]
    else:  # OGX: no safety API, so no safety providers
        assert "safety" not in providers
    assert all(set(p) == {"provider_id", "provider_type"}
               for group in providers.values() for p in group)
    assert (await get_json(lcore, "/providers"))["providers"] == providers


async def test_provider_details_hide_the_api_key(lcore: Started) -> None:
    body = await get_json(lcore, f"/v1/providers/{INFERENCE_PROVIDER_ID}")
    assert body["api"] == "inference"
    assert body["provider_id"] == INFERENCE_PROVIDER_ID
    assert body["provider_type"] == "remote::openai"
    assert "base_url" in body["config"]
    assert "health" in body
    assert "scripted-dummy-key" not in str(body)


async def test_unknown_provider_is_404(lcore: Started) -> None:
    body = await get_json(lcore, "/v1/providers/no-such-provider", 404)
    assert body["detail"] == {"response": "Provider not found",
                              "cause": "Provider with ID no-such-provider does not exist"}


async def test_tools_lists_builtins_and_the_configured_mcp_server(lcore: Started) -> None:
    tools = (await get_json(lcore, "/v1/tools"))["tools"]
    builtins = [t for t in tools if t["server_source"] == "builtin"]
    # info.feature: the file-search group's two tools, served by the file-search provider (OGX
    # lists no tools: LCore names the group's, as upstream does, when that provider is there)
    assert [(t["identifier"], t["provider_id"], t["toolgroup_id"], t["source"], t["type"])
            for t in builtins] == [
        ("insert_into_memory", "file-search", "builtin::file_search", "builtin", "tool"),
        ("file_search", "file-search", "builtin::file_search", "builtin", "tool")]
    assert builtins[1]["parameters"] == [{
        "name": "query", "description": "The query to search for. Can be a natural language "
                                        "sentence or keywords.",
        "parameter_type": "string", "required": True, "default": None}]
    mcp = [t for t in tools if t["source"] == "mcp"]
    assert mcp == [{"identifier": MCP_NAME, "description": f"MCP server {MCP_NAME} (unavailable)",
                    "parameters": [], "provider_id": "model-context-protocol",
                    "toolgroup_id": MCP_NAME, "server_source": MCP_URL,
                    "type": "mcp_server", "source": "mcp"}]
    assert (await get_json(lcore, "/tools"))["tools"] == tools


async def test_shields_lists_llama_guard(lcore: Started) -> None:
    if not await backend_serves(lcore.app.runtime, "/v1/shields"):
        assert (await get_json(lcore, "/v1/shields"))["shields"] == []
        pytest.skip("the backend has no safety API (OGX): no Llama Guard to list")
    shields = (await get_json(lcore, "/v1/shields"))["shields"]
    guard = next(s for s in shields if s["identifier"] == SHIELD_ID)
    assert guard["provider_id"] == "llama-guard"
    assert guard["provider_resource_id"] == LLM_MODEL_ID
    assert guard["type"] == "shield"
    assert (await get_json(lcore, "/shields"))["shields"] == shields


async def test_rags_lists_and_describes_a_vector_store(lcore: Started) -> None:
    name = f"catalog-{lcore.mode}-{uuid.uuid4().hex[:8]}"
    store = await lcore.app.runtime.llama.client.vector_stores.create(name=name)
    try:
        rags = (await get_json(lcore, "/v1/rags"))["rags"]
        assert store.id in rags
        assert (await get_json(lcore, "/rags"))["rags"] == rags
        info = await get_json(lcore, f"/v1/rags/{store.id}")
        assert info["id"] == store.id
        assert info["name"] == name
        assert info["object"] == "vector_store"
        assert isinstance(info["created_at"], int) and info["created_at"] > 0
        assert info["usage_bytes"] == 0
        assert info["file_counts"]["total"] == 0
        assert {"last_active_at", "expires_at", "status"} <= set(info)
    finally:
        await lcore.app.runtime.llama.client.vector_stores.delete(store.id)
    assert store.id not in (await get_json(lcore, "/v1/rags"))["rags"]


async def test_unknown_rag_is_404(lcore: Started) -> None:
    body = await get_json(lcore, "/v1/rags/vs_does-not-exist", 404)
    assert body["detail"]["response"] == "Rag not found"
    assert "vs_does-not-exist" in body["detail"]["cause"]


async def test_llama_stack_unreachable_is_503_json(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    # Started without Llama Stack (degraded mode), after a single attempt to reach it.
    app = create_app(write_config(tmp_path, {"url": closed, "max_retries": 1,
                                             "allow_degraded_mode": True}),
                     plugins=load_plugins(entrypoints=False))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for path in ("/v1/models", "/v1/providers", "/v1/tools", "/v1/shields", "/v1/rags",
                     "/v1/rags/vs_x", "/v1/providers/openai"):
            response = await client.get(path)
            assert response.status_code == 503, path
            body = await response.get_json()
            assert body["detail"]["response"] == "Unable to connect to OGX", path


async def test_impossible_rag_id_is_400_not_a_backend_error(lcore: Started) -> None:
    for bad in ("bad%01id", "a%20b", "..%2F..%2Fetc"):
        response = await lcore.client.get(f"/v1/rags/{bad}")
        assert response.status_code in (400, 404), bad
        assert response.status_code != 503
    response = await lcore.client.get("/v1/rags/bad%01id")
    assert response.status_code == 400
    assert (await response.get_json())["detail"]["response"] == "Invalid rag ID format"


async def test_tools_show_mcp_urls_only_to_admins(tmp_path: Path,
                                                  llama_stack_server: Any) -> None:
    """Server URLs name internal hosts (and may carry credentials): other callers see the
    server's name; an admin sees the URL with its credentials masked."""
    import base64
    import json

    secret_url = "http://svc:hunter2@127.0.0.1:9/mcp?api_key=abc123&region=eu"
    identity = base64.b64encode(json.dumps({"identity": {
        "type": "User", "org_id": "o", "user": {"user_id": "u1", "username": "ann"}}}).encode())

    async def mcp_tool(actions: list[str]) -> tuple[str, dict[str, Any]]:
        path = write_config(
            tmp_path / "-".join(actions), {"url": llama_stack_server.url},
            mcp_servers=[{"name": MCP_NAME, "url": secret_url}],
            authentication={"module": "rh-identity", "rh_identity_config": {}},
            authorization={"access_rules": [{"role": "*", "actions": actions}]})
        app = create_app(path, plugins=load_plugins(entrypoints=False))
        async with app.test_app_class(app, startup_timeout=STARTUP_TIMEOUT_S) as test_app:
            response = await test_app.test_client().get(
                "/v1/tools", headers={"X-RH-Identity": identity.decode()})
            text = await response.get_data(as_text=True)
            assert response.status_code == 200, text
            [mcp] = [t for t in json.loads(text)["tools"] if t["source"] == "mcp"]
            return text, mcp

    text, mcp = await mcp_tool(["get_tools"])
    assert "hunter2" not in text and "abc123" not in text and "127.0.0.1" not in text
    assert mcp["server_source"] == MCP_NAME
    text, mcp = await mcp_tool(["admin"])
    assert "hunter2" not in text and "abc123" not in text
    assert mcp["server_source"] == "http://svc:*****@127.0.0.1:9/mcp?api_key=*****&region=eu"
