"""The error bodies upstream's clients parse, situation by situation, through the real app.

Each row is one situation a client of upstream lightspeed-stack can meet, with upstream's status
and `detail.response` (asserted exactly) and the start of its `detail.cause` (upstream's fixed
words; LCore may add detail after them). Upstream's texts come from its newest code
(src/models/api/responses/error/*, src/authentication/*; commit cd1a0484); docs/upstream.md
"Error bodies" lists them with LCore's and the deliberate differences.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import lcore_auth_jwk.plugin
import lcore_auth_k8s.plugin
import lcore_quota.plugin
import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llama_stack import LlamaStackServer
from tests.core.conftest import make_app, serving, stack_url, write_config
from tests.e2e.support import lcore_config, started
from tests.plugins.auth_jwk.test_jwk import AUDIENCE, ISSUER, JwksServer, Signer, jwks, signer
from tests.plugins.auth_k8s.apiserver import FakeApiServer
from tests.plugins.auth_k8s.conftest import api, certs

__all__ = ["api", "certs", "jwks", "make_app", "serving", "signer", "stack_url", "write_config"]

CREDENTIALS = "Missing or invalid credentials provided by client"
NO_HEADER = "No Authorization header found"
NO_TOKEN = "No token found in Authorization header"
FORBIDDEN = "User does not have permission to access this endpoint"


def expect(body: dict[str, Any], status: int, got_status: int, response: str,
           cause: str) -> None:
    assert got_status == status, body
    detail = body["detail"]
    assert detail["response"] == response, body
    assert detail["cause"].startswith(cause), body


def identity(data: bytes | str) -> dict[str, str]:
    raw = data.encode() if isinstance(data, str) else data
    return {"X-RH-Identity": base64.b64encode(raw).decode()}


NOT_ENTITLED = ('{"identity": {"type": "User", "org_id": "1", "user": {"user_id": "u-1", '
                '"username": "alice"}}, "entitlements": {"rhel": {"is_entitled": false}}}')
API_KEY = {"module": "api-key-token", "api_key_config": {"api_key": "k-1"}}
RH = {"module": "rh-identity", "rh_identity_config": {"required_entitlements": ["rhel"]}}

# situation: (authentication section, extra config, method, path, headers, status, response, cause)
BUILT_IN_ROWS: dict[str, tuple[Any, ...]] = {
    "noop-with-token, no header": ({"module": "noop-with-token"}, {}, "POST", "/v1/authorized",
                                   {}, 401, CREDENTIALS, NO_HEADER),
    "noop-with-token, not Bearer": ({"module": "noop-with-token"}, {}, "POST", "/v1/authorized",
                                    {"Authorization": "Basic dTpw"}, 401, CREDENTIALS, NO_TOKEN),
    "api-key-token, no header": (API_KEY, {}, "POST", "/v1/authorized", {}, 401, CREDENTIALS,
                                 NO_HEADER),
    "api-key-token, wrong key": (API_KEY, {}, "POST", "/v1/authorized",
                                 {"Authorization": "Bearer k-2"}, 401, "Invalid API Key", ""),
    "rh-identity, no header": (RH, {}, "POST", "/v1/authorized", {}, 401,
                               "Missing x-rh-identity header", ""),
    "rh-identity, not base64": (RH, {}, "POST", "/v1/authorized", {"X-RH-Identity": "!!"}, 400,
                                "Invalid base64 encoding in x-rh-identity header", ""),
    "rh-identity, not JSON": (RH, {}, "POST", "/v1/authorized", identity("{nope"), 400,
                              "Invalid JSON in x-rh-identity header", ""),
    "rh-identity, no identity": (RH, {}, "POST", "/v1/authorized", identity("[1]"), 400,
                                 "Invalid identity data", ""),
    "rh-identity, not entitled": (RH, {}, "POST", "/v1/authorized", identity(NOT_ENTITLED), 403,
                                  "Insufficient entitlements", ""),
    "RBAC refuses the action": (
        {"module": "noop-with-token"},
        {"authorization": {"access_rules": [{"role": "*", "actions": ["info"]}],
                           "always_apply_access_rules": True}},
        "GET", "/v1/config", {"Authorization": "Bearer t"}, 403, FORBIDDEN,
        "User 00000000-0000-0000-0000-000 is not authorized to access this endpoint."),
    "noop, empty user_id": ({"module": "noop"}, {}, "POST", "/v1/authorized?user_id=", {}, 400,
                            "user_id cannot be empty", ""),
    "noop-with-token, empty user_id": ({"module": "noop-with-token"}, {}, "POST",
                                       "/v1/authorized?user_id=", {"Authorization": "Bearer t"},
                                       400, "user_id cannot be empty", ""),
    "feedback disabled": ({"module": "noop"}, {"user_data_collection": {
        "feedback_enabled": False}}, "POST", "/v1/feedback", {}, 403,
        "Storing feedback is disabled", "Storing feedback is disabled."),
}


@pytest.mark.parametrize("situation", list(BUILT_IN_ROWS))
async def test_built_in_modules(situation: str, make_app: Any) -> None:
    authentication, extra, method, path, headers, status, response, cause = \
        BUILT_IN_ROWS[situation]
    client = make_app({"authentication": authentication, **extra}).test_client()
    answer = await client.open(path, method=method, headers=headers,
                               json={"conversation_id": "conv_" + "0" * 48, "user_question": "q",
                                     "llm_response": "a", "sentiment": 1})
    expect(await answer.get_json(), status, answer.status_code, response, cause)


def jwk_rows(signer: Signer) -> dict[str, tuple[dict[str, str], str]]:
    past = int(time.time()) - 3600
    return {
        "no header": ({}, NO_HEADER),
        "not Bearer": ({"Authorization": f"Basic {signer.token()}"}, NO_TOKEN),
        "expired": ({"Authorization": f"Bearer {signer.token(iat=past - 60, nbf=past - 60,
                                                             exp=past)}"}, "Token has expired"),
        "unknown key": ({"Authorization": f"Bearer {signer.token(kid='no-such-key')}"},
                        "Token signed by unknown key"),
        "missing user claim": ({"Authorization": f"Bearer {signer.token(user_id=None)}"},
                               "Token missing claim: user_id"),
    }


@pytest.mark.parametrize("situation", ["no header", "not Bearer", "expired", "unknown key",
                                       "missing user claim"])
async def test_jwk_token(situation: str, jwks: JwksServer, signer: Signer, write_config: Any,
                         serving: Any) -> None:
    config = {"authentication": {"module": "jwk-token", "jwk_config": {
        "url": jwks.url, "issuer": ISSUER, "audience": AUDIENCE}}}
    app = create_app(write_config(config), plugins=load_plugins(
        entrypoints=False, extra=[lcore_auth_jwk.plugin]))
    headers, cause = jwk_rows(signer)[situation]
    async with serving(app) as client:
        answer = await client.post("/v1/authorized", headers=headers)
        expect(await answer.get_json(), 401, answer.status_code, CREDENTIALS, cause)


K8S_ROWS: dict[str, tuple[dict[str, str], int, str, str]] = {
    "no header": ({}, 401, CREDENTIALS, NO_HEADER),
    "not Bearer": ({"Authorization": "Basic alice-token"}, 401, CREDENTIALS, NO_TOKEN),
    "unknown token": ({"Authorization": "Bearer nobody-token"}, 401, CREDENTIALS,
                      "Invalid or expired Kubernetes token"),
    "access review refuses": ({"Authorization": "Bearer bob-token"}, 403, FORBIDDEN,
                              "User uid-bob is not authorized to access this endpoint."),
}


@pytest.mark.parametrize("situation", list(K8S_ROWS))
async def test_k8s(situation: str, api: FakeApiServer, certs: dict[str, Path],
                   write_config: Any, serving: Any) -> None:
    config = {"authentication": {"module": "k8s", "k8s_cluster_api": api.url,
                                 "k8s_ca_cert_path": str(certs["cert"]),
                                 "k8s_config": {"service_account_token_path":
                                                str(certs["sa_token"])}}}
    app = create_app(write_config(config), plugins=load_plugins(
        entrypoints=False, extra=[lcore_auth_k8s.plugin]))
    headers, status, response, cause = K8S_ROWS[situation]
    async with serving(app) as client:
        answer = await client.post("/v1/authorized", headers=headers)
        expect(await answer.get_json(), status, answer.status_code, response, cause)


# --- situations behind the real Llama Stack -------------------------------------------------

UNKNOWN = "conv_" + "0" * 48
ATTACHMENT = {"attachment_type": "log", "content_type": "text/plain", "content": "x"}

# situation: (method, path, JSON body, status, response, cause)
BACKEND_ROWS: dict[str, tuple[Any, ...]] = {
    "malformed conversation id": (
        "GET", "/v1/conversations/bad!id", None, 400, "Invalid conversation ID format",
        "The conversation ID bad!id has invalid format."),
    "unknown conversation": (
        "GET", f"/v1/conversations/{UNKNOWN}", None, 404, "Conversation not found",
        f"Conversation with ID {UNKNOWN} does not exist"),
    "query continues an unknown conversation": (
        "POST", "/v1/query", {"query": "hi", "conversation_id": UNKNOWN}, 404,
        "Conversation not found", f"Conversation with ID {UNKNOWN} does not exist"),
    "attachment type": (
        "POST", "/v1/query", {"query": "hi", "attachments": [
            {**ATTACHMENT, "attachment_type": "diary"}]}, 422, "Invalid attribute value",
        "Invalid attachment type diary: must be one of ['alert', "),
    "attachment content type": (
        "POST", "/v1/streaming_query", {"query": "hi", "attachments": [
            {**ATTACHMENT, "content_type": "text/html"}]}, 422, "Invalid attribute value",
        "Invalid attachment content type text/html: must be one of ['application/json', "),
    "unknown model": (
        "POST", "/v1/query", {"query": "hi", "model": "no-such-model", "provider": "openai"},
        404, "Model not found", "Model with ID no-such-model does not exist"),
    "malformed rag id": (
        "GET", "/v1/rags/bad id", None, 400, "Invalid rag ID format",
        "The rag ID 'bad id' has invalid format."),
    "unknown rag": (
        "GET", "/v1/rags/vs_missing", None, 404, "Rag not found",
        "Rag with ID vs_missing does not exist"),
    "unknown provider": (
        "GET", "/v1/providers/no-such-provider", None, 404, "Provider not found",
        "Provider with ID no-such-provider does not exist"),
}


@pytest.mark.parametrize("situation", list(BACKEND_ROWS))
async def test_behind_llama_stack(situation: str, tmp_path: Path, llama_stack_server: Any,
                                  llm: Any) -> None:
    method, path, body, status, response, cause = BACKEND_ROWS[situation]
    app = create_app(lcore_config(tmp_path, "server", llama_stack_server.url),
                     plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        answer = await test_app.test_client().open(path, method=method, json=body)
        expect(await answer.get_json(), status, answer.status_code, response, cause)


async def test_quota_exhausted(tmp_path: Path, llama_stack_server: Any, llm: Any) -> None:
    quota = {"sqlite": {"db_path": str(tmp_path / "quota.db")}, "limiters": [
        {"name": "tiny", "type": "user_limiter", "initial_quota": 1, "quota_increase": 0,
         "period": "1 day"}]}
    app = create_app(lcore_config(tmp_path, "server", llama_stack_server.url,
                                  quota_handlers=quota),
                     plugins=load_plugins(entrypoints=False, extra=[lcore_quota.plugin]))
    async with started(app) as test_app:
        client = test_app.test_client()
        # A budget smaller than one query still serves one; its real usage spends the budget.
        assert (await client.post("/v1/query", json={"query": "first"})).status_code == 200
        answer = await client.post("/v1/query", json={"query": "second"})
        expect(await answer.get_json(), 429, answer.status_code, "The quota has been exceeded",
               "User 00000000-0000-0000-0000-000 has 0 tokens, but 1 tokens are needed")


async def test_llama_stack_down(tmp_path: Path, own_stack: LlamaStackServer, llm: Any) -> None:
    app = create_app(lcore_config(tmp_path, "server", own_stack.url),
                     plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        own_stack.kill()
        client = test_app.test_client()
        for path in ("/v1/query", "/v1/streaming_query"):
            answer = await client.post(path, json={"query": "during the outage"})
            expect(await answer.get_json(), 503, answer.status_code,
                   "Unable to connect to OGX", "")
