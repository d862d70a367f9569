"""`trusted-proxy` (lcore-auth-k8s): the proxy's service-account token is reviewed by the loopback
HTTPS API server; the caller is the user the proxy names in a header."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lcore_auth_k8s.plugin
import pytest

from lcore_core import ConfigError
from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from tests.plugins.auth_k8s.apiserver import SA_TOKEN, TOKEN_REVIEW, FakeApiServer

PROXY = "proxy-sa-token"
STRANGER = "stranger-sa-token"
UNAUTHORIZED = "Missing or invalid credentials provided by client"


@pytest.fixture
def proxy_api(api: FakeApiServer) -> FakeApiServer:
    api.users[PROXY] = {"username": "system:serviceaccount:gateway:auth-proxy", "uid": "u-1",
                        "groups": ["system:serviceaccounts"]}
    api.users[STRANGER] = {"username": "system:serviceaccount:other:intruder", "uid": "u-2"}
    api.users["no-user-token"] = {}
    api.users["no-name-token"] = {"username": "", "uid": "u-3"}
    return api


def proxy_config(api_url: str, certs: dict[str, Path], **trusted: Any) -> dict[str, Any]:
    return {"authentication": {
        "module": "trusted-proxy", "k8s_cluster_api": api_url,
        "k8s_ca_cert_path": str(certs["cert"]),
        "k8s_config": {"service_account_token_path": str(certs["sa_token"])},
        "trusted_proxy_config": trusted}}


async def whoami(client: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    response = await client.post("/v1/authorized", headers=headers)
    return response.status_code, await response.get_json()


def forwarded(token: str, user: str | None = "alice@example.com",
              header: str = "X-Forwarded-User") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if user is not None:
        headers[header] = user
    return headers


async def test_selected_by_yaml_through_entry_point(proxy_api: FakeApiServer,
                                                   certs: dict[str, Path], write_config: Any,
                                                   serving: Any) -> None:
    plugins = load_plugins()
    assert "trusted-proxy" in plugins.auth_providers()
    assert plugins.owner("auth provider", "trusted-proxy") == "auth_k8s"
    app = create_app(write_config(proxy_config(proxy_api.url, certs)), plugins=plugins)
    async with serving(app) as client:
        status, body = await whoami(client, forwarded(PROXY, "  alice@example.com "))
        assert status == 200, body
        # As upstream: the named user is id and name; user ids are not checked.
        assert body == {"user_id": "alice@example.com", "username": "alice@example.com",
                        "skip_userid_check": True}
        status, body = await whoami(client, forwarded(PROXY, "bob"))
        assert (status, body["user_id"]) == (200, "bob")
    # The proxy's token was reviewed once (then cached), with LCore's own credential.
    assert proxy_api.bodies == [{"apiVersion": "authentication.k8s.io/v1",
                                 "kind": "TokenReview", "spec": {"token": PROXY}}]
    assert proxy_api.credentials == [f"Bearer {SA_TOKEN}"]


async def test_refusals_carry_upstreams_bodies(proxy_api: FakeApiServer, certs: dict[str, Path],
                                              make_app: Any, serving: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = proxy_config(proxy_api.url, certs, allowed_service_accounts=[
        {"namespace": "gateway", "name": "auth-proxy"}])
    app = make_app(config, lcore_auth_k8s.plugin)
    cases: list[tuple[dict[str, str], int, str, str]] = [
        ({}, 401, UNAUTHORIZED, "Missing Authorization header"),
        ({"Authorization": "Basic YWxpY2U6cHc="}, 401, UNAUTHORIZED,
         "No token found in Authorization header"),
        ({"Authorization": f"Bearer {PROXY} extra"}, 401, UNAUTHORIZED,
         "No token found in Authorization header"),
        (forwarded("x" * (17 * 1024)), 401, UNAUTHORIZED, "Token larger than 16384 bytes"),
        (forwarded("forged-token"), 401, UNAUTHORIZED,
         "Invalid or expired proxy service account token"),
        (forwarded("no-user-token"), 401, UNAUTHORIZED,
         "Invalid service account token: missing user information"),
        (forwarded("no-name-token"), 401, UNAUTHORIZED,
         "Invalid service account token: missing username"),
        (forwarded(STRANGER), 403, "User does not have permission to access this endpoint",
         "User system:serviceaccount:other:intruder is not authorized to access this endpoint."),
        (forwarded(PROXY, None), 401, UNAUTHORIZED, "Missing required header 'X-Forwarded-User'"),
        (forwarded(PROXY, "   "), 401, UNAUTHORIZED,
         "Missing required header 'X-Forwarded-User'"),
        (forwarded(PROXY, "u" * 1025), 401, UNAUTHORIZED,
         "Header 'X-Forwarded-User' larger than 1024 bytes"),
    ]
    async with serving(app) as client:
        for headers, status, response, cause in cases:
            got = await whoami(client, headers)
            assert got == (status, {"detail": {"response": response, "cause": cause}}), headers
    # Neither the header-less, malformed nor oversized tokens reached the API server; each
    # distinct token was reviewed once.
    reviewed = [b["spec"]["token"] for b in proxy_api.bodies]
    assert sorted(reviewed) == sorted(["forged-token", "no-user-token", "no-name-token",
                                       STRANGER, PROXY])
    assert proxy_api.hits[TOKEN_REVIEW] == 5
    assert "not in trusted_proxy_config.allowed_service_accounts" in caplog.text
    for token in (PROXY, STRANGER, SA_TOKEN):
        assert token not in caplog.text


async def test_any_service_account_without_allowlist(proxy_api: FakeApiServer,
                                                     certs: dict[str, Path], make_app: Any,
                                                     serving: Any) -> None:
    for allowed in ([], None):
        config = proxy_config(proxy_api.url, certs, user_header="X-Remote-User",
                              allowed_service_accounts=allowed)
        async with serving(make_app(config, lcore_auth_k8s.plugin)) as client:
            status, body = await whoami(client, forwarded(STRANGER, "carol", "X-Remote-User"))
            assert (status, body["user_id"]) == (200, "carol")
            status, body = await whoami(client, forwarded(STRANGER, "carol"))
            assert status == 401
            assert body["detail"]["cause"] == "Missing required header 'X-Remote-User'"


async def test_access_rules_apply_with_the_everyone_role(proxy_api: FakeApiServer,
                                                        certs: dict[str, Path], make_app: Any,
                                                        serving: Any) -> None:
    """As upstream (and unlike `k8s`): the rules judge trusted-proxy callers, who have only `*`."""
    config = proxy_config(proxy_api.url, certs)
    config["authorization"] = {"access_rules": [{"role": "*", "actions": ["info"]}]}
    async with serving(make_app(config, lcore_auth_k8s.plugin)) as client:
        assert (await client.get("/v1/info", headers=forwarded(PROXY))).status_code == 200
        refused = await client.get("/v1/config", headers=forwarded(PROXY))
        assert refused.status_code == 403
        assert (await refused.get_json())["detail"]["cause"] == \
            "User alice@example.com is not authorized to access this endpoint."


async def test_api_server_down_is_503_and_not_cached(proxy_api: FakeApiServer,
                                                     certs: dict[str, Path], make_app: Any,
                                                     serving: Any) -> None:
    url = proxy_api.url
    proxy_api.close()
    async with serving(make_app(proxy_config(url, certs), lcore_auth_k8s.plugin)) as client:
        for _ in range(2):
            status, body = await whoami(client, forwarded(PROXY))
            assert status == 503, body
            assert body["detail"]["response"] == "Unable to connect to Kubernetes API"


@pytest.mark.parametrize(("trusted", "message"), [
    (None, "section trusted_proxy_config is required when authentication.module is "
           "'trusted-proxy'"),
    ({"user_header": "Authorization"}, "must not be Authorization"),
    ({"user_header": "X User"}, "must be an HTTP header name"),
    ({"allowed_service_accounts": [{"namespace": "gateway"}]}, "required key is missing"),
    ({"allowed": []}, "unknown key"),
])
def test_configuration_errors(trusted: Any, message: str, certs: dict[str, Path],
                              make_app: Any) -> None:
    config = proxy_config("https://127.0.0.1:1", certs)
    if trusted is None:
        del config["authentication"]["trusted_proxy_config"]
    else:
        config["authentication"]["trusted_proxy_config"] = trusted
    with pytest.raises(ConfigError, match=message):
        make_app(config, lcore_auth_k8s.plugin)


def test_k8s_config_errors_name_the_key(certs: dict[str, Path], make_app: Any) -> None:
    config = proxy_config("https://127.0.0.1:1", certs)
    config["authentication"]["k8s_config"]["timeout_seconds"] = -1
    with pytest.raises(ConfigError, match=r"authentication\.k8s_config\.timeout_seconds"):
        make_app(config, lcore_auth_k8s.plugin)


def test_without_the_plugin_names_it(certs: dict[str, Path], make_app: Any) -> None:
    config = proxy_config("https://127.0.0.1:1", certs)
    del config["authentication"]["k8s_config"]
    with pytest.raises(ConfigError, match="'trusted-proxy' is provided by the plugin "
                                          "lcore-auth-k8s, which is not installed"):
        make_app(config)
