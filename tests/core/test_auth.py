"""The built-in authentication modules and the RBAC resolver."""

from __future__ import annotations

import base64
import hmac
import json
from typing import Any

import pytest
from quart import Quart

from lcore_core import AuthTuple, Unauthorized
from lcore_core.auth import RbacResolver
from lcore_core.builtins import ApiKeyAuth, NoopAuth

USER = AuthTuple("u1", "user")


def who(*roles: str) -> AuthTuple:
    return AuthTuple("u1", "user", frozenset(roles))


# --- RBAC -------------------------------------------------------------------------------------


def test_no_rules_allows_everything() -> None:
    resolver = RbacResolver(None)
    assert resolver.allowed(who(), "query") and resolver.allowed(who(), "anything")


def test_empty_rules_allow_everything() -> None:
    # As upstream: an `authorization` section with no rules restricts nothing.
    resolver = RbacResolver([])
    assert resolver.allowed(who("dev"), "query")


def test_wildcard_role_applies_to_everyone() -> None:
    resolver = RbacResolver([{"role": "*", "actions": ["info"]},
                             {"role": "dev", "actions": ["query"]}])
    assert resolver.allowed(who(), "info")
    assert resolver.allowed(who("dev"), "info") and resolver.allowed(who("dev"), "query")
    assert not resolver.allowed(who(), "query")
    assert not resolver.allowed(who("ops"), "query")


def test_admin_action_grants_every_action() -> None:
    resolver = RbacResolver([{"role": "root", "actions": ["admin"]},
                             {"role": "dev", "actions": ["query"]}])
    assert resolver.allowed(who("root"), "delete_other_conversations")
    assert resolver.allowed(who("root"), "a_plugin_action")
    assert not resolver.allowed(who("dev"), "delete_other_conversations")


def test_inherits_chain() -> None:
    resolver = RbacResolver([
        {"role": "viewer", "actions": ["info"]},
        {"role": "user", "actions": ["query"], "inherits": ["viewer"]},
        {"role": "lead", "actions": ["feedback"], "inherits": ["user"]},
    ])
    assert resolver.actions_for(frozenset({"lead"})) == {"info", "query", "feedback"}
    assert resolver.actions_for(frozenset({"user"})) == {"info", "query"}
    assert resolver.actions_for(frozenset({"viewer"})) == {"info"}
    assert not resolver.allowed(who("user"), "feedback")


def test_inherits_cycle_terminates() -> None:
    resolver = RbacResolver([
        {"role": "a", "actions": ["info"], "inherits": ["b"]},
        {"role": "b", "actions": ["query"], "inherits": ["c"]},
        {"role": "c", "actions": ["feedback"], "inherits": ["a"]},
        {"role": "self", "actions": ["get_models"], "inherits": ["self"]},
    ])
    expected = {"info", "query", "feedback"}
    for role in ("a", "b", "c"):
        assert resolver.actions_for(frozenset({role})) == expected
    assert resolver.actions_for(frozenset({"self"})) == {"get_models"}


def test_inherited_wildcard_and_unknown_parent() -> None:
    resolver = RbacResolver([{"role": "*", "actions": ["info"]},
                             {"role": "dev", "actions": ["query"], "inherits": ["missing"]}])
    assert resolver.actions_for(frozenset({"dev"})) == {"info", "query"}


# --- authenticators ---------------------------------------------------------------------------


async def authenticate(authenticator: Any, headers: dict[str, str] | None = None,
                       query: str = "") -> AuthTuple:
    app = Quart(__name__)
    async with app.test_request_context(f"/x{query}", headers=headers or {}):
        from quart import request

        return await authenticator.authenticate(request)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_noop_is_default_user_and_forwards_token() -> None:
    auth = await authenticate(NoopAuth())
    assert auth.token is None and auth.skip_user_id_check
    auth = await authenticate(NoopAuth(), bearer("tok-1"), "?user_id=someone")
    assert auth.token == "tok-1" and auth.user_id == "someone"


async def test_noop_with_token_needs_a_token() -> None:
    with pytest.raises(Unauthorized) as info:
        await authenticate(NoopAuth(need_token=True))
    assert info.value.status == 401
    with pytest.raises(Unauthorized):
        await authenticate(NoopAuth(need_token=True), {"Authorization": "Basic dXNlcjpwdw=="})
    with pytest.raises(Unauthorized):
        await authenticate(NoopAuth(need_token=True), {"Authorization": "Bearer   "})
    auth = await authenticate(NoopAuth(need_token=True), bearer("client-token"))
    assert auth.token == "client-token"


async def test_noop_with_token_through_the_app(make_app: Any) -> None:
    client = make_app({"authentication": {"module": "noop-with-token"}}).test_client()
    for headers, cause in (({}, "No Authorization header found"),
                           ({"Authorization": "Basic eDp5"}, "No token found in Authorization "
                                                             "header")):
        response = await client.get("/v1/liveness", headers=headers)
        assert response.status_code == 401
        assert await response.get_json() == {"detail": {  # upstream's body
            "response": "Missing or invalid credentials provided by client", "cause": cause}}
    assert (await client.get("/v1/liveness", headers=bearer("anything"))).status_code == 200


# --- which modules the access rules judge (as upstream's authorization middleware) ------------

DENY_CONFIG = {"access_rules": [{"role": "*", "actions": ["info"]}]}
API_KEY = {"module": "api-key-token", "api_key_config": {"api_key": "k-1"}}


@pytest.mark.parametrize("authentication", [
    {"module": "noop"}, {"module": "noop-with-token"}, API_KEY])
async def test_rules_do_not_judge_token_modules(authentication: dict[str, Any],
                                                make_app: Any) -> None:
    """Upstream ignores access rules for noop, noop-with-token and api-key-token."""
    client = make_app({"authentication": authentication,
                       "authorization": DENY_CONFIG}).test_client()
    assert (await client.get("/v1/config", headers=bearer("k-1"))).status_code == 200
    strict = make_app({"authentication": authentication,
                       "authorization": {**DENY_CONFIG, "always_apply_access_rules": True}})
    response = await strict.test_client().get("/v1/config", headers=bearer("k-1"))
    assert response.status_code == 403
    assert (await response.get_json())["detail"] == {
        "response": "User does not have permission to access this endpoint",
        "cause": "User 00000000-0000-0000-0000-000 is not authorized to access this endpoint."}
    assert (await strict.test_client().get("/v1/liveness", headers=bearer("k-1"))).status_code \
        == 200


def rh_identity(make_app: Any, authorization: dict[str, Any]) -> Any:
    return make_app({"authentication": {"module": "rh-identity"},
                     "authorization": authorization}).test_client()


RH_USER = {"X-RH-Identity": base64.b64encode(json.dumps({"identity": {
    "type": "User", "org_id": "o1", "account_number": "a1",
    "user": {"user_id": "u-7", "username": "ann"}}, "entitlements": {}}).encode()).decode()}


async def test_rules_judge_rh_identity_and_empty_rules_allow_all(make_app: Any) -> None:
    client = rh_identity(make_app, DENY_CONFIG)
    assert (await client.get("/v1/liveness", headers=RH_USER)).status_code == 200
    assert (await client.get("/v1/config", headers=RH_USER)).status_code == 403
    open_client = rh_identity(make_app, {"access_rules": []})
    assert (await open_client.get("/v1/config", headers=RH_USER)).status_code == 200


async def test_api_key_good_wrong_and_wrong_length() -> None:
    auth = ApiKeyAuth({"api_key": "k-0123456789", "api_keys": []})
    assert (await authenticate(auth, bearer("k-0123456789"))).token == "k-0123456789"
    for bad in ("k-0123456780", "x-0123456789", "k-01234567", "k-0123456789-longer", "K"):
        with pytest.raises(Unauthorized, match="Invalid API Key"):
            await authenticate(auth, bearer(bad))
    with pytest.raises(Unauthorized, match="No Authorization header found"):
        await authenticate(auth)


async def test_api_key_any_of_several_keys(tmp_path: Any) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("from-file-1\n\nfrom-file-2\n")
    auth = ApiKeyAuth({"api_key": "single", "api_keys": ["listed-a", "listed-b"],
                       "api_key_file": str(key_file)})
    for good in ("single", "listed-a", "listed-b", "from-file-1", "from-file-2"):
        assert (await authenticate(auth, bearer(good))).token == good
    with pytest.raises(Unauthorized):
        await authenticate(auth, bearer("listed-c"))


async def test_api_key_compares_in_constant_time_against_every_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = ApiKeyAuth({"api_key": None, "api_keys": ["first-key", "second-key", "third-key"]})
    # A match on the first key still compares against all of them (no early exit).
    await authenticate(auth, bearer("first-key"))
    assert [b for _, b in calls] == [b"first-key", b"second-key", b"third-key"]
    calls.clear()
    with pytest.raises(Unauthorized):
        await authenticate(auth, bearer("nope"))
    assert len(calls) == 3 and all(a == b"nope" for a, _ in calls)


async def test_api_key_config_is_validated(write_config: Any) -> None:
    from lcore_core import ConfigError
    from lcore_core.app import create_app
    from lcore_core.plugins import load_plugins

    path = write_config({"authentication": {"module": "api-key-token"}})
    with pytest.raises(ConfigError, match="api_key_config"):
        create_app(path, plugins=load_plugins(entrypoints=False))
    path = write_config({"authentication": {"module": "api-key-token",
                                            "api_key_config": {"api_keys": []}}})
    with pytest.raises(ConfigError, match="api_key"):
        create_app(path, plugins=load_plugins(entrypoints=False))
