"""lcore-auth-k8s against a loopback HTTPS "API server" answering TokenReview and
SubjectAccessReview with the real JSON shapes (no cluster needed)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import lcore_auth_k8s.plugin
import pytest

from lcore_core import ConfigError
from lcore_core.app import create_app
from lcore_core.mcp import mcp_tools
from lcore_core.plugins import load_plugins
from tests.plugins.auth_k8s.apiserver import (
    ACCESS_REVIEW,
    CLUSTER_VERSION,
    SA_TOKEN,
    TOKEN_REVIEW,
    FakeApiServer,
)


def k8s_config(api_url: str, certs: dict[str, Path], **extra: Any) -> dict[str, Any]:
    k8s: dict[str, Any] = {"service_account_token_path": str(certs["sa_token"])}
    k8s.update(extra)
    return {"authentication": {"module": "k8s", "k8s_cluster_api": api_url,
                               "k8s_ca_cert_path": str(certs["cert"]), "k8s_config": k8s}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def whoami(client: Any, token: str) -> tuple[int, dict[str, Any]]:
    response = await client.post("/v1/authorized", headers=bearer(token))
    return response.status_code, await response.get_json()


async def test_selected_by_yaml_through_entry_point(api: FakeApiServer, certs: dict[str, Path],
                                                   write_config: Any, serving: Any) -> None:
    plugins = load_plugins()
    assert "k8s" in plugins.auth_providers()
    assert plugins.owner("auth provider", "k8s") == "auth_k8s"
    assert plugins.distribution_of("auth_k8s") == "lcore-auth-k8s"
    app = create_app(write_config(k8s_config(api.url, certs)), plugins=plugins)
    async with serving(app) as client:
        status, body = await whoami(client, "alice-token")
        assert status == 200, body
        assert body == {"user_id": "uid-alice", "username": "alice", "skip_userid_check": False}
    # The real request shapes, sent with LCore's service-account credential.
    review, access = api.bodies[0], api.bodies[1]
    assert review == {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": "alice-token"}}
    assert access["kind"] == "SubjectAccessReview"
    assert access["spec"] == {"user": "alice", "groups": ["devs", "system:authenticated"],
                              "nonResourceAttributes": {"path": "/ls-access", "verb": "get"}}
    assert api.credentials == [f"Bearer {SA_TOKEN}"] * 2


async def test_refusals(api: FakeApiServer, certs: dict[str, Path], make_app: Any,
                        serving: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(k8s_config(api.url, certs), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        status, body = await whoami(client, "forged-token")
        assert status == 401 and "Invalid or expired Kubernetes token" in body["detail"]["cause"]
        status, body = await whoami(client, "bob-token")   # a valid token, SAR says no
        assert status == 403, body
        assert body["detail"] == {  # upstream's texts
            "response": "User does not have permission to access this endpoint",
            "cause": "User uid-bob is not authorized to access this endpoint."}
        response = await client.post("/v1/authorized")
        assert response.status_code == 401
        response = await client.post("/v1/authorized",
                                     headers={"Authorization": "Basic YWxpY2U6cHc="})
        assert response.status_code == 401
        huge = await client.post("/v1/authorized", headers=bearer("x" * (1024 * 1024)))
        assert huge.status_code == 401
    assert api.hits[TOKEN_REVIEW] == 2  # the header-less, Basic and huge ones never got there
    for token in ("forged-token", "bob-token", "alice-token", SA_TOKEN):
        assert token not in caplog.text


async def test_cache_ttl_and_revocation(api: FakeApiServer, certs: dict[str, Path],
                                        make_app: Any, serving: Any) -> None:
    app = make_app(k8s_config(api.url, certs, cache_ttl_seconds=1), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await whoami(client, "alice-token"))[0] == 200
        assert api.hits[TOKEN_REVIEW] == 1 and api.hits[ACCESS_REVIEW] == 1
        assert (await whoami(client, "alice-token"))[0] == 200
        assert (await whoami(client, "bob-token"))[0] == 403
        assert (await whoami(client, "bob-token"))[0] == 403   # the denial is cached too
        assert api.hits[TOKEN_REVIEW] == 2 and api.hits[ACCESS_REVIEW] == 2
        del api.users["alice-token"]                           # revoked in the cluster
        assert (await whoami(client, "alice-token"))[0] == 200  # still within the TTL
        await asyncio.sleep(1.1)
        status, _ = await whoami(client, "alice-token")
        assert status == 401
        assert api.hits[TOKEN_REVIEW] == 3


async def test_cache_disabled(api: FakeApiServer, certs: dict[str, Path], make_app: Any,
                              serving: Any) -> None:
    app = make_app(k8s_config(api.url, certs, cache_ttl_seconds=0), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        for _ in range(3):
            assert (await whoami(client, "alice-token"))[0] == 200
    assert api.hits[TOKEN_REVIEW] == 3


async def test_access_rules_ignored_by_default(api: FakeApiServer, certs: dict[str, Path],
                                              make_app: Any, serving: Any) -> None:
    """As upstream: with `k8s` the SubjectAccessReview decides, access rules do not."""
    config = k8s_config(api.url, certs)
    config["authorization"] = {"access_rules": [{"role": "nobody", "actions": ["info"]}]}
    app = make_app(config, lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await client.get("/v1/config", headers=bearer("alice-token"))).status_code == 200


async def test_groups_become_roles(api: FakeApiServer, certs: dict[str, Path], make_app: Any,
                                   serving: Any) -> None:
    config = k8s_config(api.url, certs, group_roles={"devs": ["developer"]})
    config["authorization"] = {"always_apply_access_rules": True,
                               "access_rules": [{"role": "developer", "actions": ["get_config"]},
                                                {"role": "devs", "actions": ["info"]}]}
    api.allowed.add("bob")
    app = make_app(config, lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await client.get("/v1/config", headers=bearer("alice-token"))).status_code == 200
        assert (await client.get("/v1/info", headers=bearer("alice-token"))).status_code == 200
        assert (await client.get("/v1/config", headers=bearer("bob-token"))).status_code == 403
        assert (await client.get("/v1/info", headers=bearer("bob-token"))).status_code == 403


async def test_kube_admin_is_identified_by_cluster(api: FakeApiServer, certs: dict[str, Path],
                                                   make_app: Any, serving: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(k8s_config(api.url, certs), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        status, body = await whoami(client, "admin-token")
        assert status == 200 and body["user_id"] == "local"  # not in a cluster: as upstream
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "1")
    app = make_app(k8s_config(api.url, certs), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        status, body = await whoami(client, "admin-token")
        assert status == 200, body
        assert body == {"user_id": "cluster-1234", "username": "kube:admin",
                        "skip_userid_check": False}
    assert api.hits[CLUSTER_VERSION] == 1


async def test_api_server_down_is_503(api: FakeApiServer, certs: dict[str, Path],
                                      make_app: Any, serving: Any) -> None:
    url = api.url
    api.close()
    app = make_app(k8s_config(url, certs), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        status, body = await whoami(client, "alice-token")
        assert status == 503, body
        assert body["detail"]["response"] == "Unable to connect to Kubernetes API"
        assert "unreachable" in body["detail"]["cause"]
        # Not cached: every request asks again (and still gets 503, never 200).
        assert (await whoami(client, "alice-token"))[0] == 503


async def test_untrusted_certificate_is_refused(api: FakeApiServer, certs: dict[str, Path],
                                                make_app: Any, serving: Any) -> None:
    config = k8s_config(api.url, certs)
    config["authentication"]["k8s_ca_cert_path"] = str(certs["other_ca"])
    app = make_app(config, lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await whoami(client, "alice-token"))[0] == 503
    assert api.hits[TOKEN_REVIEW] == 0
    config["authentication"]["skip_tls_verification"] = True
    app = make_app(config, lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await whoami(client, "alice-token"))[0] == 200


def test_no_api_server_is_a_config_error(make_app: Any, certs: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(certs["sa_token"].parent / "missing"))
    with pytest.raises(ConfigError, match="no Kubernetes API server"):
        make_app({"authentication": {"module": "k8s"}}, lcore_auth_k8s.plugin)


async def test_kubeconfig(api: FakeApiServer, certs: dict[str, Path], tmp_path: Path,
                          make_app: Any, serving: Any) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": api.url,
                                               "certificate-authority": str(certs["cert"])}}],
        "users": [{"name": "u", "user": {"token": "kubeconfig-token"}}]}))
    app = make_app({"authentication": {"module": "k8s",
                                       "k8s_config": {"kubeconfig": str(kubeconfig)}}},
                   lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await whoami(client, "alice-token"))[0] == 200
    assert api.credentials == ["Bearer kubeconfig-token"] * 2


MCP = [{"name": "cluster-tools", "url": "http://127.0.0.1:9/mcp",
        "authorization_headers": {"Authorization": "kubernetes",
                                  "X-Cluster-Token": "kubernetes"}}]


async def test_kubernetes_mcp_header_is_the_callers_token(api: FakeApiServer,
                                                          certs: dict[str, Path],
                                                          make_app: Any, serving: Any) -> None:
    config = k8s_config(api.url, certs)
    config.update(mcp_servers=MCP, service={"skip_unreachable_mcp": True})
    app = make_app(config, lcore_auth_k8s.plugin)
    async with serving(app):
        async with app.test_request_context("/v1/info", headers=bearer("alice-token")):
            from quart import request

            auth = await app.runtime.authenticator.authenticate(request)
        tools = mcp_tools(app.runtime, auth, {})
    assert tools[0]["authorization"] == "alice-token"
    assert tools[0]["headers"] == {"X-Cluster-Token": "Bearer alice-token"}
    server = app.runtime.config.mcp_servers[0]
    no_token = auth._replace(token=None)
    assert app.runtime.plugins.mcp_header_value("kubernetes", server, "X-Cluster-Token",
                                                no_token, {}) is None


def test_kubernetes_mcp_header_needs_k8s_module(make_app: Any) -> None:
    # As upstream: under a module without the caller's token the server is left out, with a
    # warning naming the key that asks for it.
    app = make_app({"mcp_servers": MCP, "service": {"skip_unreachable_mcp": True}},
                   lcore_auth_k8s.plugin)
    assert app.runtime.config.mcp_servers == []
    [warning] = app.runtime.config.warnings
    assert "(k8s or noop-with-token do)" in warning
    assert "mcp_servers[0].authorization_headers.Authorization" in warning


async def test_mcp_server_receives_the_callers_kubernetes_token(
        api: FakeApiServer, certs: dict[str, Path], make_app: Any, serving: Any,
        llm: Any, mcp_server: Any, llama_stack_server: Any) -> None:
    """End to end: the caller's reviewed token reaches the MCP server through Llama Stack."""
    config = k8s_config(api.url, certs)
    config["llama_stack"] = {"url": llama_stack_server.url, "timeout": 60}
    config["mcp_servers"] = [{"name": "cluster-tools", "url": mcp_server.url,
                              "authorization_headers": {"Authorization": "kubernetes"}}]
    app = make_app(config, lcore_auth_k8s.plugin)
    llm.script("cluster weather", tool_call=("get_weather", {"city": "Prague"}),
               then="Done: {tool_output}")
    async with serving(app) as client:
        response = await client.post("/v2/query", headers=bearer("alice-token"),
                                     json={"query": "cluster weather",
                                           "generate_topic_summary": False})
        assert response.status_code == 200, await response.get_data(as_text=True)
    calls = [c for c in mcp_server.tool_calls if c.arguments == {"city": "Prague"}]
    assert calls, "the MCP tool was not called"
    sent = {k.lower(): v for k, v in calls[-1].headers.items()}
    assert sent["authorization"] == "Bearer alice-token"
