"""`azure_entra_id`: LCore obtains Entra ID tokens (client credentials, from a loopback token
endpoint standing in for login.microsoftonline.com) and a real Llama Stack's `remote::azure`
provider calls the model with them: the scripted LLM sees the token as its bearer key."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml
from lcore_core.testing.llm import DEFAULT_LLM_MODEL, ScriptedLLM

from .support import lcore_config, parse_sse, started

pytestmark = pytest.mark.e2e

TENANT, CLIENT_ID, CLIENT_SECRET = "tenant-1234", "client-5678", "secret-90ab"
SCOPE = "https://cognitiveservices.azure.com/.default"
AZURE_MODEL = "azure-gpt"


class TokenEndpoint:
    """Entra ID's token endpoint for one tenant and one application; tokens `tok-1`, `tok-2`...

    `lifetime` is the `expires_in` it gives; `refuse` makes it answer 401 as Entra ID does for
    a wrong secret."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.lifetime = 3600
        self.refuse = False
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                endpoint.requests.append({"path": self.path, **form})
                good = (self.path == f"/{TENANT}/oauth2/v2.0/token" and not endpoint.refuse
                        and form.get("grant_type") == "client_credentials"
                        and form.get("client_id") == CLIENT_ID
                        and form.get("client_secret") == CLIENT_SECRET
                        and form.get("scope") == SCOPE)
                body = ({"token_type": "Bearer", "expires_in": endpoint.lifetime,
                         "access_token": f"tok-{len(endpoint.requests)}"} if good else
                        {"error": "invalid_client", "error_description": "AADSTS7000215"})
                data = json.dumps(body).encode()
                self.send_response(200 if good else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.authority = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def azure_stack(scripted_llm: ScriptedLLM,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaStackServer]:
    """A Llama Stack whose `azure` provider (remote::azure, no key of its own) reaches the
    scripted LLM, beside the usual `openai` one."""
    workdir = tmp_path_factory.mktemp("azure-stack")
    path = write_run_yaml(workdir, scripted_llm.base_url)
    run = yaml.safe_load(path.read_text())
    run["providers"]["inference"].append({
        "provider_id": "azure", "provider_type": "remote::azure",
        "config": {"base_url": scripted_llm.base_url}})
    run["registered_resources"]["models"].append({
        "model_id": AZURE_MODEL, "provider_id": "azure", "provider_model_id": DEFAULT_LLM_MODEL,
        "model_type": "llm"})
    path.write_text(yaml.safe_dump(run, sort_keys=False))
    server = LlamaStackServer(path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def token_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", endpoint.authority)
    try:
        yield endpoint
    finally:
        endpoint.close()


def azure_app(workdir: Path, stack: LlamaStackServer) -> Any:
    path = lcore_config(workdir, "server", stack.url,
                        azure_entra_id={"tenant_id": TENANT, "client_id": CLIENT_ID,
                                        "client_secret": CLIENT_SECRET})
    return create_app(path, plugins=load_plugins())


def bearers(llm: ScriptedLLM) -> list[str | None]:
    """The key of each answer call (the shields' guard calls go through the `openai` provider)."""
    return [r.headers.get("authorization") for r in llm.chat_requests]


async def test_azure_models_get_the_entra_id_token(tmp_path, azure_stack, token_endpoint, llm):
    app = azure_app(tmp_path, azure_stack)
    async with started(app) as test_app:
        client = test_app.test_client()
        assert len(token_endpoint.requests) == 1  # a first token at start-up
        for stream in (False, True):
            llm.reset()
            route = "/v1/streaming_query" if stream else "/v1/query"
            response = await client.post(route, json={
                "query": "hello azure", "model": DEFAULT_LLM_MODEL, "provider": "azure",
                "generate_topic_summary": False})
            text = await response.get_data(as_text=True)
            assert response.status_code == 200, text
            if stream:
                assert parse_sse(text)[-1]["event"] == "end"
            assert bearers(llm) == ["Bearer tok-1"]
        # The other provider's models get nothing of it.
        llm.reset()
        response = await client.post("/v1/query", json={
            "query": "hello openai", "model": DEFAULT_LLM_MODEL, "provider": "openai",
            "generate_topic_summary": False})
        assert response.status_code == 200
        assert bearers(llm) == ["Bearer scripted-dummy-key"]
    assert len(token_endpoint.requests) == 1  # cached: one token for all of it


async def test_an_expiring_token_is_refreshed(tmp_path, azure_stack, token_endpoint, llm):
    token_endpoint.lifetime = 20  # inside the 30 s leeway: stale at once
    app = azure_app(tmp_path, azure_stack)
    async with started(app) as test_app:
        client = test_app.test_client()
        for _ in range(2):
            response = await client.post("/v1/query", json={
                "query": "again", "model": DEFAULT_LLM_MODEL, "provider": "azure",
                "generate_topic_summary": False})
            assert response.status_code == 200
    assert bearers(llm) == ["Bearer tok-2", "Bearer tok-3"]


async def test_refused_credentials_are_a_clear_503(tmp_path, azure_stack, token_endpoint, llm):
    token_endpoint.refuse = True
    app = azure_app(tmp_path, azure_stack)
    async with started(app) as test_app:  # start-up goes on: the log says why
        response = await test_app.test_client().post("/v1/query", json={
            "query": "refused", "model": DEFAULT_LLM_MODEL, "provider": "azure"})
        assert response.status_code == 503
        body = await response.get_json()
        assert body["detail"]["response"] == "Unable to obtain an Azure Entra ID token"
        assert CLIENT_SECRET not in json.dumps(body) and "AADSTS" not in json.dumps(body)
    assert bearers(llm) == []  # no call went to the model without its token
