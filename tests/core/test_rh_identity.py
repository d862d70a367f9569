"""The built-in `rh-identity` module: the X-RH-Identity header through the app."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from lcore_core import ConfigError

USER = {"identity": {"type": "User", "org_id": "123", "account_number": "456",
                     "user": {"user_id": "u-1", "username": "alice", "is_org_admin": False}},
        "entitlements": {"rhel": {"is_entitled": True}, "ansible": {"is_entitled": False}}}
SERVICE_ACCOUNT = {"identity": {"type": "ServiceAccount", "org_id": "123",
                                "service_account": {"client_id": "sa-9",
                                                    "username": "service-account-sa-9"}},
                   "entitlements": {"rhel": {"is_entitled": True}}}
SYSTEM = {"identity": {"type": "System", "org_id": "123", "account_number": "456",
                       "system": {"cn": "c87dcb4c-8af1-40dd-878e-60c744edddd0"}},
          "entitlements": {"rhel": {"is_entitled": True}}}


def header(data: Any) -> dict[str, str]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return {"X-RH-Identity": base64.b64encode(raw).decode()}


def rh(required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"required_entitlements": required or []}
    section.update(extra)
    return {"authentication": {"module": "rh-identity", "rh_identity_config": section}}


async def who(client: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    response = await client.post("/v1/authorized", headers=headers)
    return response.status_code, await response.get_json()


@pytest.mark.parametrize(("identity", "user_id", "username"), [
    (USER, "u-1", "alice"),
    (SERVICE_ACCOUNT, "sa-9", "service-account-sa-9"),
    (SYSTEM, "c87dcb4c-8af1-40dd-878e-60c744edddd0", "456"),
])
async def test_identity_types(make_app: Any, identity: dict[str, Any], user_id: str,
                              username: str) -> None:
    client = make_app(rh(["rhel"])).test_client()
    status, body = await who(client, header(identity))
    assert status == 200, body
    assert body == {"user_id": user_id, "username": username, "skip_userid_check": False}


async def test_section_is_optional(make_app: Any) -> None:
    client = make_app({"authentication": {"module": "rh-identity"}}).test_client()
    assert (await who(client, header(USER)))[0] == 200


def broken(path: list[str], value: Any = None) -> dict[str, Any]:
    data = json.loads(json.dumps(USER))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(("headers", "status", "cause"), [
    ({}, 401, "X-RH-Identity header is required"),
    ({"X-RH-Identity": "!!not base64!!"}, 400, "not base64-encoded"),
    (header(b"not json"), 400, "not JSON"),
    (header(b"\xff\xfe"), 400, "not JSON"),
    (header([1, 2]), 400, "missing 'identity'"),
    (header({"identity": None}), 400, "missing 'identity'"),
    (header(broken(["identity", "type"], "Robot")), 400, "unsupported identity type"),
    (header(broken(["identity", "user"])), 400, "identity.user"),
    (header(broken(["identity", "user", "user_id"])), 400, "identity.user.user_id"),
    (header(broken(["identity", "user", "username"], "   ")), 400, "identity.user.username"),
    (header(broken(["identity", "user", "username"], 7)), 400, "identity.user.username"),
    (header(broken(["identity", "user", "user_id"], "a\nb")), 400, "control characters"),
    (header(broken(["identity", "org_id"], 5)), 400, "identity.org_id"),
    ({"X-RH-Identity": "A" * 9000}, 400, "exceeds 8192 bytes"),
    (header(broken(["entitlements", "rhel"], {"is_entitled": False})), 403, "rhel"),
    (header(broken(["entitlements"])), 403, "rhel"),
])
async def test_refusals(make_app: Any, headers: dict[str, str], status: int,
                        cause: str) -> None:
    client = make_app(rh(["rhel"])).test_client()
    got, body = await who(client, headers)
    assert got == status, body
    assert cause in body["detail"]["cause"], body


async def test_every_required_entitlement(make_app: Any) -> None:
    client = make_app(rh(["rhel", "ansible"])).test_client()
    status, body = await who(client, header(USER))
    assert status == 403 and body["detail"]["cause"].endswith("ansible")
    client = make_app(rh(max_header_size=512)).test_client()
    assert (await who(client, header(USER)))[0] == 200
    assert (await who(client, {"X-RH-Identity": "A" * 600}))[0] == 400


def test_config_validated(make_app: Any) -> None:
    with pytest.raises(ConfigError, match=r"rh_identity_config\.max_header_size"):
        make_app(rh(max_header_size=1))
    with pytest.raises(ConfigError, match=r"rh_identity_config\.unknown"):
        make_app(rh(unknown=1))
