"""`jwk-token`: a JWT bearer token verified against the JWKS; role rules give roles.

The token itself is never logged: failures log only the reason and the token's `kid`/`alg`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

from lcore_auth_jwk.keys import Jwks, key_type_for
from lcore_auth_jwk.roles import RoleRule, resolve_roles
from lcore_core import AuthTuple, Unauthorized, load_json, require_bearer

with warnings.catch_warnings():
    import authlib.deprecate  # noqa: F401  (it installs an "always" filter on import)

    warnings.simplefilter("ignore")  # authlib.jose's deprecation notice (see keys.py)
    from authlib.jose import JsonWebToken
    from authlib.jose.errors import (
        BadSignatureError,
        ExpiredTokenError,
        InvalidClaimError,
        InvalidTokenError,
        JoseError,
        MissingClaimError,
    )

if TYPE_CHECKING:
    from quart import Request

log = logging.getLogger("lcore.auth.jwk")


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    # Before authentication: nesting is bounded (a deep header is a 401, not a 500).
    return load_json(base64.urlsafe_b64decode(padded.encode("ascii")))


class JwkTokenAuth:
    """Verifies `Authorization: Bearer <JWT>`; `AuthTuple.token` is the token as received."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.algorithms: list[str] = list(settings["algorithms"])
        self.jwt = JsonWebToken(self.algorithms)
        self.jwks = Jwks(settings["url"], ttl=settings["jwks_cache_ttl"],
                         min_interval=settings["jwks_refetch_min_interval"])
        self.leeway: int = settings["leeway_seconds"]
        self.max_token_size: int = settings["max_token_size"]
        jwt_config = settings["jwt_configuration"]
        self.user_id_claim: str = jwt_config["user_id_claim"]
        self.username_claim: str = jwt_config["username_claim"]
        self.rules = [RoleRule.from_settings(r) for r in jwt_config["role_rules"]]
        options: dict[str, Any] = {"exp": {"essential": bool(settings["require_exp"])}}
        if settings["issuer"]:
            options["iss"] = {"essential": True, "value": settings["issuer"]}
        if settings["audience"]:
            options["aud"] = {"essential": True, "value": settings["audience"]}
        self.claims_options = options

    async def close(self) -> None:
        await self.jwks.close()

    async def authenticate(self, request: Request) -> AuthTuple:
        started = time.monotonic()
        try:
            token = self._token(request)
            header = self._header(token)
            key = await self.jwks.find(header.get("kid"), header["alg"])
            claims = self._verify(token, key)
            user_id = self._claim(claims, self.user_id_claim)
            username = self._claim(claims, self.username_claim)
        except Unauthorized as exc:
            log.info("jwk-token authentication failed: %s", exc.cause)
            raise
        roles = resolve_roles(self.rules, dict(claims))
        log.debug("jwk-token authenticated %s in %.1f ms", user_id,
                  (time.monotonic() - started) * 1000)
        return AuthTuple(user_id, username, roles, token)

    def _token(self, request: Request) -> str:
        header = request.headers.get("Authorization", "")
        # Checked before any parsing, so an oversized header costs nothing to refuse.
        if len(header) > self.max_token_size + len("Bearer "):
            raise Unauthorized(cause=f"Token larger than {self.max_token_size} bytes")
        return require_bearer(request)

    def _header(self, token: str) -> dict[str, Any]:
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthorized(cause="Token is not a signed JWT (expected three segments)")
        try:
            header = _b64json(parts[0])
        except (ValueError, UnicodeError, binascii.Error):
            raise Unauthorized(cause="Token could not be decoded") from None
        if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
            raise Unauthorized(cause="Token header has no algorithm")
        alg = header["alg"]
        # Refused before any key is chosen: `none`, HMAC (a public key used as the secret)
        # and anything the configuration does not list.
        if alg not in self.algorithms or key_type_for(alg) is None:
            raise Unauthorized(cause=f"Token algorithm {alg[:20]!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized(cause="Token header has an invalid kid")
        return header

    def _verify(self, token: str, key: Any) -> Any:
        try:
            claims = self.jwt.decode(token, key, claims_options=self.claims_options)
        except BadSignatureError:
            raise Unauthorized(cause="Invalid token signature") from None
        except JoseError as exc:
            raise Unauthorized(cause=f"Token could not be decoded ({exc.error})") from None
        except (ValueError, TypeError, UnicodeError):
            raise Unauthorized(cause="Token could not be decoded") from None
        try:
            claims.validate(leeway=self.leeway)
        except ExpiredTokenError:
            raise Unauthorized(cause="Token has expired") from None
        except MissingClaimError as exc:
            raise Unauthorized(cause=f"Token validation failed: {exc.description}") from None
        except InvalidClaimError as exc:
            raise Unauthorized(cause=f"Token validation failed: {exc.description}") from None
        except InvalidTokenError as exc:
            # nbf / iat in the future
            raise Unauthorized(cause=f"Token is not yet valid: {exc.description}") from None
        except JoseError as exc:
            raise Unauthorized(cause=f"Token validation failed ({exc.error})") from None
        return claims

    @staticmethod
    def _claim(claims: Any, name: str) -> str:
        value = claims.get(name)
        if value is None:
            raise Unauthorized(cause=f"Token missing claim: {name}")
        if not isinstance(value, str) or not value:
            raise Unauthorized(cause=f"Token has invalid claim: {name}")
        return value
