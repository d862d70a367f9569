"""lcore-auth-jwk end to end: tokens minted with local keys, the JWKS on a loopback HTTP server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import lcore_auth_jwk.plugin
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lcore_core import ConfigError
from lcore_core.app import create_app
from lcore_core.plugins import load_plugins

with warnings.catch_warnings():
    import authlib.deprecate  # noqa: F401  (it installs an "always" filter on import)

    warnings.simplefilter("ignore")
    from authlib.jose import JsonWebKey, JsonWebToken

ISSUER = "https://idp.example.test/realms/lcore"
AUDIENCE = "lcore"
MINT = JsonWebToken(["RS256", "ES256", "PS256"])


class Signer:
    """A key pair, its public JWK, and tokens signed with it."""

    def __init__(self, kid: str, alg: str = "RS256") -> None:
        self.kid, self.alg = kid, alg
        if alg.startswith("ES"):
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = self.private.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.key = JsonWebKey.import_key(self.pem)  # parsed once: minting stays fast
        self.jwk = JsonWebKey.import_key(self.public_pem).as_dict()
        self.jwk.update(kid=kid, alg=alg, use="sig")

    def token(self, *, kid: str | None = "same", **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now - 5, "exp": now + 300,
                   "user_id": "u-123", "username": "alice"}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        header = {"alg": self.alg, "typ": "JWT"}
        if kid is not None:
            header["kid"] = self.kid if kid == "same" else kid
        return MINT.encode(header, payload, self.key).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b"" if secret is None else hmac.new(secret, signing_input.encode(),
                                                    hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


class JwksServer:
    """A loopback HTTP server publishing a JWKS; counts hits and can play dead (503)."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.down = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                if owner.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/certs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer("key-1")


@pytest.fixture
def jwks(signer: Signer) -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = [signer.jwk]
    yield server
    server.close()


def jwk_config(url: str, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"url": url, "issuer": ISSUER, "audience": AUDIENCE,
                              "leeway_seconds": 5}
    config.update(extra)
    return {"authentication": {"module": "jwk-token", "jwk_config": config}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def expect_401(client: Any, headers: dict[str, str], cause: str) -> None:
    response = await client.get("/v1/info", headers=headers)
    body = await response.get_json()
    assert response.status_code == 401, body
    assert body["detail"]["response"] == "Missing or invalid credentials provided by client"
    assert cause in body["detail"]["cause"], body


# --- discovery and configuration -----------------------------------------------------------------


async def test_selected_by_yaml_through_entry_point(jwks: JwksServer, signer: Signer,
                                                   write_config: Any, serving: Any) -> None:
    plugins = load_plugins()
    assert plugins.distribution_of("auth_jwk") == "lcore-auth-jwk"
    assert "jwk-token" in plugins.auth_providers()
    assert plugins.owner("auth provider", "jwk-token") == "auth_jwk"
    app = create_app(write_config(jwk_config(jwks.url)), plugins=plugins)
    async with serving(app) as client:
        token = signer.token()
        response = await client.post("/v1/authorized", headers=bearer(token))
        assert response.status_code == 200
        assert await response.get_json() == {"user_id": "u-123", "username": "alice",
                                             "skip_userid_check": False}


@pytest.mark.parametrize(("extra", "message"), [
    ({"algorithms": ["HS256"]}, "algorithm 'HS256' is refused"),
    ({"algorithms": ["none"]}, "algorithm 'none' is refused"),
    ({"algorithms": ["RS257"]}, "unknown algorithm"),
    ({"url": "ftp://idp/certs"}, "neither"),
    ({"jwt_configuration": {"role_rules": [{"jsonpath": "$.[", "operator": "equals",
                                            "value": 1, "roles": ["a"]}]}}, "JSONPath"),
    ({"jwt_configuration": {"role_rules": [{"jsonpath": "$.a", "operator": "like",
                                            "value": 1, "roles": ["a"]}]}}, "operator"),
    ({"jwt_configuration": {"role_rules": [{"jsonpath": "$.a", "operator": "match",
                                            "value": "(", "roles": ["a"]}]}},
     "regular expression"),
    ({"jwt_configuration": {"role_rules": [{"jsonpath": "$.a", "operator": "equals",
                                            "value": 1, "roles": ["*"]}]}}, "wildcard"),
])
def test_config_refused(make_app: Any, extra: dict[str, Any], message: str) -> None:
    config = jwk_config(extra.pop("url", "http://127.0.0.1:9/certs"), **extra)
    with pytest.raises(ConfigError) as info:
        make_app(config, lcore_auth_jwk.plugin)
    assert message in str(info.value)
    assert "authentication.jwk_config" in str(info.value)


def test_jwk_config_is_required(make_app: Any) -> None:
    with pytest.raises(ConfigError, match="jwk_config is required"):
        make_app({"authentication": {"module": "jwk-token"}}, lcore_auth_jwk.plugin)


# --- the attack table --------------------------------------------------------------------------


def attack_tokens(signer: Signer) -> dict[str, tuple[dict[str, str], str]]:
    """name -> (request headers, expected cause)."""
    now = int(time.time())
    other = Signer("key-1")  # same kid, different key: a bad signature
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "user_id": "u", "username": "u"}
    good = signer.token()
    head, payload, _ = good.split(".")
    return {
        "expired": (bearer(signer.token(exp=now - 120, iat=now - 600, nbf=now - 600)),
                    "Token has expired"),
        "not yet valid": (bearer(signer.token(nbf=now + 600, iat=now)), "not yet valid"),
        "wrong issuer": (bearer(signer.token(iss="https://evil.test")), "iss"),
        "wrong audience": (bearer(signer.token(aud="someone-else")), "aud"),
        "no expiry": (bearer(signer.token(exp=None)), "exp"),
        "bad signature": (bearer(other.token()), "Invalid token signature"),
        "tampered payload": (bearer(f"{head}.{b64(json.dumps(claims).encode())}."
                                    f"{good.split('.')[2]}"), "Invalid token signature"),
        "alg none": (bearer(forged({"alg": "none", "kid": signer.kid}, claims, None)),
                     "algorithm 'none' is not accepted"),
        "HS256 with the public key": (
            bearer(forged({"alg": "HS256", "kid": signer.kid}, claims, signer.public_pem)),
            "algorithm 'HS256' is not accepted"),
        "unknown kid": (bearer(signer.token(kid="no-such-key")), "unknown key"),
        "malformed": (bearer("not-a-jwt"), "three segments"),
        "malformed header": (bearer(f"!!!.{payload}.sig"), "could not be decoded"),
        "missing header": ({}, "No Authorization header"),
        "wrong scheme": ({"Authorization": f"Basic {good}"}, "No token found in Authorization"),
        "empty bearer": ({"Authorization": "Bearer "}, "No token found in Authorization"),
        "1 MB token": (bearer(good + "A" * (1024 * 1024)), "Token larger than"),
        "missing user claim": (bearer(signer.token(user_id=None)), "missing claim: user_id"),
        "non-string username": (bearer(signer.token(username=42)), "invalid claim: username"),
    }


async def test_attack_table(jwks: JwksServer, signer: Signer, make_app: Any, serving: Any,
                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(jwk_config(jwks.url), lcore_auth_jwk.plugin)
    attacks = attack_tokens(signer)
    async with serving(app) as client:
        # Sanity: the same set-up accepts a good token, so every refusal below is the attack's.
        assert (await client.get("/v1/info", headers=bearer(signer.token()))).status_code == 200
        for name, (headers, cause) in attacks.items():
            started = time.perf_counter()
            try:
                await expect_401(client, headers, cause)
            except AssertionError as exc:
                raise AssertionError(f"attack {name!r}: {exc}") from None
            assert time.perf_counter() - started < 0.5, name
    logged = caplog.text
    assert "jwk-token authentication failed" in logged
    for name, (headers, _) in attacks.items():
        token = headers.get("Authorization", "").partition(" ")[2]
        if token:
            # Neither the token nor its signature appears anywhere in the log.
            assert token not in logged, name
            signature = token.split(".")[-1]
            assert len(signature) < 20 or signature[-20:] not in logged, name


async def test_token_forwarded_unchanged_and_algorithms(jwks: JwksServer, signer: Signer,
                                                        make_app: Any, serving: Any) -> None:
    ec_signer = Signer("ec-1", "ES256")
    ps_signer = Signer("ps-1", "PS256")
    jwks.keys = [signer.jwk, ec_signer.jwk, ps_signer.jwk]
    app = make_app(jwk_config(jwks.url, algorithms=["RS256", "ES256"]), lcore_auth_jwk.plugin)
    async with serving(app) as client:
        for token in (signer.token(), ec_signer.token()):
            async with app.test_request_context("/v1/info", headers=bearer(token)):
                from quart import request

                auth = await app.runtime.authenticator.authenticate(request)
            assert auth.token == token and auth.user_id == "u-123"
        # PS256 is a good signature by a published key, but not a configured algorithm.
        await expect_401(client, bearer(ps_signer.token()), "'PS256' is not accepted")
        # An RSA key cannot verify a token that claims ES256 (key/algorithm mismatch).
        swapped = Signer("key-1", "ES256").token()
        await expect_401(client, bearer(swapped), "unknown key")


async def test_custom_claims_and_no_kid(jwks: JwksServer, signer: Signer, make_app: Any,
                                        serving: Any) -> None:
    config = jwk_config(jwks.url, jwt_configuration={"user_id_claim": "sub",
                                                     "username_claim": "preferred_username"})
    app = make_app(config, lcore_auth_jwk.plugin)
    async with serving(app) as client:
        token = signer.token(kid=None, sub="s-1", preferred_username="bob")
        body = await (await client.post("/v1/authorized", headers=bearer(token))).get_json()
        assert body["user_id"] == "s-1" and body["username"] == "bob"
        await expect_401(client, bearer(signer.token(sub="s-1")),
                         "missing claim: preferred_username")


# --- the JWKS: rotation, flood, outage, local file -------------------------------------------


async def test_rotation_without_restart(jwks: JwksServer, signer: Signer, make_app: Any,
                                        serving: Any) -> None:
    app = make_app(jwk_config(jwks.url, jwks_refetch_min_interval=0), lcore_auth_jwk.plugin)
    async with serving(app) as client:
        assert (await client.get("/v1/info", headers=bearer(signer.token()))).status_code == 200
        assert jwks.hits == 1
        new = Signer("key-2")
        await expect_401(client, bearer(new.token()), "unknown key")
        jwks.keys = [new.jwk]  # the IdP rotates
        assert (await client.get("/v1/info", headers=bearer(new.token()))).status_code == 200
        assert jwks.hits == 3  # one refetch per unknown kid, none for a known one
        assert (await client.get("/v1/info", headers=bearer(new.token()))).status_code == 200
        assert jwks.hits == 3


async def test_flood_of_bad_kids_is_rate_limited(jwks: JwksServer, signer: Signer,
                                                 make_app: Any, serving: Any) -> None:
    app = make_app(jwk_config(jwks.url, jwks_refetch_min_interval=10), lcore_auth_jwk.plugin)
    async with serving(app) as client:
        assert (await client.get("/v1/info", headers=bearer(signer.token()))).status_code == 200
        tokens = [signer.token(kid=f"forged-{i}") for i in range(200)]
        responses = await asyncio.gather(*(client.get("/v1/info", headers=bearer(t))
                                           for t in tokens))
        assert {r.status_code for r in responses} == {401}
        # The initial load only: the refetch interval has not passed since.
        assert jwks.hits == 1
        assert (await client.get("/v1/info", headers=bearer(signer.token()))).status_code == 200


async def test_flood_allows_one_refetch_per_interval(jwks: JwksServer, signer: Signer,
                                                     make_app: Any, serving: Any) -> None:
    app = make_app(jwk_config(jwks.url, jwks_refetch_min_interval=1), lcore_auth_jwk.plugin)
    async with serving(app) as client:
        assert (await client.get("/v1/info", headers=bearer(signer.token()))).status_code == 200
        await asyncio.sleep(1.05)
        responses = await asyncio.gather(*(client.get("/v1/info", headers=bearer(
            signer.token(kid=f"forged-{i}"))) for i in range(100)))
        assert {r.status_code for r in responses} == {401}
        assert jwks.hits == 2


async def test_jwks_down_keeps_cached_keys(jwks: JwksServer, signer: Signer, make_app: Any,
                                           serving: Any) -> None:
    app = make_app(jwk_config(jwks.url, jwks_cache_ttl=1, jwks_refetch_min_interval=0),
                   lcore_auth_jwk.plugin)
    async with serving(app) as client:
        assert (await client.get("/v1/info", headers=bearer(signer.token()))).status_code == 200
        jwks.down = True
        await asyncio.sleep(1.05)  # the cache is stale: a refresh is tried and fails
        assert (await client.get("/v1/info", headers=bearer(signer.token()))).status_code == 200
        await expect_401(client, bearer(Signer("key-9").token()), "unknown key")
        assert jwks.hits >= 2


async def test_jwks_unreachable_from_the_start_fails_closed(signer: Signer, make_app: Any,
                                                            serving: Any) -> None:
    server = JwksServer()
    url = server.url
    server.close()
    app = make_app(jwk_config(url), lcore_auth_jwk.plugin)
    async with serving(app) as client:
        await expect_401(client, bearer(signer.token()), "Unable to load the authentication")


async def test_local_jwks_file(tmp_path: Any, signer: Signer, make_app: Any,
                               serving: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [signer.jwk, {"kty": "oct", "k": "c2VjcmV0"}]}))
    app = make_app(jwk_config(str(path)), lcore_auth_jwk.plugin)
    async with serving(app) as client:
        assert (await client.get("/v1/info", headers=bearer(signer.token()))).status_code == 200
        # The symmetric key in the file is never used, even for a token that names no kid.
        await expect_401(client, bearer(forged({"alg": "HS256"}, {"user_id": "x"}, b"secret")),
                         "not accepted")


# --- role rules and authorization ---------------------------------------------------------------


ROLE_RULES = [
    {"jsonpath": "$.realm_access.roles[*]", "operator": "contains", "value": "lcore-admin",
     "roles": ["admin"]},
    {"jsonpath": "$.groups[*]", "operator": "contains", "value": "devs", "roles": ["developer"]},
    # As upstream: `in` looks for the list of found values in the value.
    {"jsonpath": "$.org", "operator": "in", "value": [["acme"], ["initech"]],
     "roles": ["customer"]},
    {"jsonpath": "$.email", "operator": "match", "value": "@example\\.com$", "roles": ["staff"]},
    {"jsonpath": "$.email_verified", "operator": "equals", "value": [True], "negate": True,
     "roles": ["unverified"]},
]


async def test_access_rules_need_role_rules(jwks: JwksServer, signer: Signer, make_app: Any,
                                            serving: Any) -> None:
    """As upstream: without role rules no access rule is applied (every action allowed)."""
    config = jwk_config(jwks.url)
    config["authorization"] = {"access_rules": [{"role": "*", "actions": ["info"]}]}
    async with serving(make_app(config, lcore_auth_jwk.plugin)) as client:
        token = bearer(signer.token())
        assert (await client.get("/v1/config", headers=token)).status_code == 200
    config["authorization"]["always_apply_access_rules"] = True
    async with serving(make_app(config, lcore_auth_jwk.plugin)) as client:
        token = bearer(signer.token())
        assert (await client.get("/v1/config", headers=token)).status_code == 403
        assert (await client.get("/v1/info", headers=token)).status_code == 200


async def test_role_rules_drive_access_rules(jwks: JwksServer, signer: Signer, make_app: Any,
                                             serving: Any) -> None:
    config = jwk_config(jwks.url, jwt_configuration={"role_rules": ROLE_RULES})
    config["authorization"] = {"access_rules": [
        {"role": "admin", "actions": ["admin"]},
        {"role": "developer", "actions": ["info", "get_config"]},
        {"role": "staff", "actions": ["info"]},
    ]}
    app = make_app(config, lcore_auth_jwk.plugin)
    async with serving(app) as client:
        nobody = signer.token(email_verified=True)
        assert (await client.get("/v1/info", headers=bearer(nobody))).status_code == 403
        staff = signer.token(email="a@example.com", email_verified=True)
        assert (await client.get("/v1/info", headers=bearer(staff))).status_code == 200
        assert (await client.get("/v1/config", headers=bearer(staff))).status_code == 403
        dev = signer.token(groups=["ops", "devs"])
        assert (await client.get("/v1/config", headers=bearer(dev))).status_code == 200
        admin = signer.token(realm_access={"roles": ["lcore-admin"]})
        assert (await client.get("/v1/config", headers=bearer(admin))).status_code == 200

        async def roles_of(token: str) -> frozenset[str]:
            async with app.test_request_context("/", headers=bearer(token)):
                from quart import request

                return (await app.runtime.authenticator.authenticate(request)).roles

        assert await roles_of(signer.token(org="acme", email="x@example.com.evil",
                                           email_verified=False)) == {"customer", "unverified"}
        assert await roles_of(signer.token(org="umbrella", email_verified=True)) == set()


async def test_deeply_nested_token_header_is_401(jwks: JwksServer, make_app: Any,
                                                 serving: Any) -> None:
    """The header is decoded before any key is chosen: nesting must not reach the parser's
    recursion limit (a 500 before the fix)."""
    header = base64.urlsafe_b64encode(b'{"alg": ' + b"[" * 2000 + b"]" * 2000 + b"}")
    token = f"{header.decode().rstrip('=')}.e30.c2ln"
    app = make_app(jwk_config(jwks.url), lcore_auth_jwk.plugin)
    async with serving(app) as client:
        response = await client.get("/v1/conversations", headers=bearer(token))
        assert response.status_code == 401, await response.get_data(as_text=True)
        assert "detail" in await response.get_json()


NEAR_MISS_RULES = [
    {"jsonpath": "$.role", "operator": "contains", "value": "lcore-admin", "roles": ["c1"]},
    {"jsonpath": "$.roles", "operator": "contains", "value": "lcore-admin", "roles": ["c2"]},
    {"jsonpath": "$.roles[*]", "operator": "contains", "value": "lcore-admin", "roles": ["c3"]},
    {"jsonpath": "$.role", "operator": "equals", "value": "lcore-admin", "roles": ["e1"]},
    {"jsonpath": "$.role", "operator": "equals", "value": ["lcore-admin"], "roles": ["e2"]},
    {"jsonpath": "$.role", "operator": "in", "value": ["lcore-admin", "ops"], "roles": ["i1"]},
    {"jsonpath": "$.role", "operator": "in", "value": "lcore-admin-requested", "roles": ["i2"]},
    {"jsonpath": "$.role", "operator": "in", "value": [["lcore-admin"]], "roles": ["i3"]},
    {"jsonpath": "$.role", "operator": "match", "value": "^lcore-admin$", "roles": ["m1"]},
]


@pytest.mark.parametrize(("claims", "roles"), [
    # The exact value: every rule written for it matches, in upstream's reading.
    ({"role": "lcore-admin", "roles": ["lcore-admin"]}, {"c1", "c3", "e2", "i3", "m1"}),
    # Near misses: a longer or prefixed string never matches (no substring tests).
    ({"role": "lcore-admin-requested", "roles": ["lcore-admin-requested"]}, set()),
    ({"role": "not-lcore-admin", "roles": ["not-lcore-admin", "x"]}, set()),
    ({"role": "lcore-admi", "roles": ["lcore-admi"]}, set()),
    ({"role": "LCORE-ADMIN", "roles": ["LCORE-ADMIN"]}, set()),
    # A string claim where a list is expected (a whole value: matches), and the reverse.
    ({"role": ["lcore-admin"], "roles": "lcore-admin"}, {"c2"}),
])
async def test_role_rules_never_match_near_misses(jwks: JwksServer, signer: Signer,
                                                  make_app: Any, serving: Any,
                                                  claims: dict[str, Any],
                                                  roles: set[str]) -> None:
    app = make_app(jwk_config(jwks.url, jwt_configuration={"role_rules": NEAR_MISS_RULES}),
                   lcore_auth_jwk.plugin)
    token = signer.token(**claims)
    async with serving(app), app.test_request_context("/", headers=bearer(token)):
        from quart import request

        assert (await app.runtime.authenticator.authenticate(request)).roles == roles
