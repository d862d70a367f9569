"""Auth abuse: a flood of unknown kids, timing-safe API keys, tampered rh-identity headers."""

from __future__ import annotations

import asyncio
import base64
import hmac
import inspect
import json
from collections.abc import Iterator
from typing import Any

import lcore_auth_jwk.plugin
import pytest

from lcore_core import builtins
from tests.plugins.auth_jwk.test_jwk import JwksServer, Signer, bearer, jwk_config


@pytest.fixture
def jwks() -> Iterator[tuple[JwksServer, Signer]]:
    signer = Signer("rel-key")
    server = JwksServer()
    server.keys = [signer.jwk]
    yield server, signer
    server.close()


async def test_kid_flood_and_jwks_outage(jwks: tuple[JwksServer, Signer], make_app: Any,
                                         serving: Any) -> None:
    server, signer = jwks
    app = make_app(jwk_config(server.url, jwks_refetch_min_interval=3600, jwks_cache_ttl=3600),
                   lcore_auth_jwk.plugin)
    async with serving(app) as client:
        assert (await client.get("/v1/info", headers=bearer(signer.token()))).status_code == 200
        server.down = True  # the identity provider goes away
        forged = [signer.token(kid=f"forged-{i}") for i in range(300)]
        answers = await asyncio.gather(*(client.get("/v1/info", headers=bearer(t))
                                         for t in forged))
        assert {a.status_code for a in answers} == {401}  # unknown kid: fails closed
        assert server.hits == 1  # the flood never reached the JWKS endpoint
        # Cached keys keep working while the endpoint is down.
        assert (await client.get("/v1/info", headers=bearer(signer.token()))).status_code == 200


def test_api_key_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(builtins.hmac, "compare_digest", spy)
    auth = builtins.ApiKeyAuth({"api_key": "first-key", "api_keys": ["second", "third-key"]})

    class Request:
        def __init__(self, token: str) -> None:
            self.headers = {"Authorization": f"Bearer {token}"}

    for token, ok in (("first-key", True), ("third-key", True), ("first-kez", False)):
        calls.clear()
        if ok:
            asyncio.run(auth.authenticate(Request(token)))  # type: ignore[arg-type]
        else:
            with pytest.raises(builtins.Unauthorized):
                asyncio.run(auth.authenticate(Request(token)))  # type: ignore[arg-type]
        # Every key is compared, whichever matched: no early exit to time.
        assert [b for _, b in calls] == [b"first-key", b"second", b"third-key"]
    source = inspect.getsource(builtins.ApiKeyAuth.authenticate)
    assert "compare_digest" in source
    assert "given ==" not in source and "given in self._keys" not in source


def identity(**identity: Any) -> str:
    return base64.b64encode(json.dumps({"identity": identity}).encode()).decode()


USER = {"type": "User", "org_id": "42", "user": {"user_id": "u1", "username": "alice"}}


@pytest.mark.parametrize(("header", "status"), [
    (None, 401),
    ("", 401),
    ("not base64!!", 400),
    (base64.b64encode(b"not json").decode(), 400),
    (base64.b64encode(b"[1, 2]").decode(), 400),
    (identity(type="Admin", user={"user_id": "u1", "username": "a"}), 400),
    (identity(type="User", user={"user_id": "", "username": "a"}), 400),
    (identity(type="User", user={"user_id": "u1\n", "username": "a"}), 400),
    (identity(type="User", user={"user_id": "u" * 1000, "username": "a"}), 400),
    (identity(type="User", user="u1"), 400),
    (identity(type="User", user={"user_id": 7, "username": "a"}), 400),
    (identity(**USER)[:-4] + "AAAA", 400),  # tampered bytes
    ("A" * 20000, 400),  # oversized
])
async def test_rh_identity_tampering(make_app: Any, serving: Any, header: str | None,
                                     status: int) -> None:
    app = make_app({"authentication": {"module": "rh-identity"}})
    async with serving(app) as client:
        good = await client.post("/v1/authorized", headers={"X-RH-Identity": identity(**USER)})
        assert good.status_code == 200
        headers = {} if header is None else {"X-RH-Identity": header}
        response = await client.post("/v1/authorized", headers=headers)
        body = await response.get_json()
        assert response.status_code == status, body
        assert set(body["detail"]) >= {"response", "cause"}
