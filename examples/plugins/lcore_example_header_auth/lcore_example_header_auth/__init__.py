"""Example LCore plugin: the caller's identity comes from headers set by a trusted reverse proxy.

Select it with `authentication.module: header`. It imports only from `lcore_core`'s package
root, as every plugin should.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marshmallow import Schema, fields, validate
from quart import Blueprint, g, jsonify

from lcore_core import (
    AuthProvider,
    AuthTuple,
    ReadinessCheck,
    Unauthorized,
    authorize,
    doc,
    hookimpl,
    route,
)

if TYPE_CHECKING:
    from quart import Request

    from lcore_core import Config, Runtime

MODULE = "header"
#: The action this plugin adds; grant it in `authorization.access_rules` to use `/whoami`.
WHOAMI = "header_whoami"
_TOKEN = validate.Regexp(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", error="not a valid HTTP header name")


class HeaderConfigSchema(Schema):
    """`authentication.header_config`."""

    user_header = fields.String(load_default="X-Forwarded-User", validate=_TOKEN)
    roles_header = fields.String(load_default=None, allow_none=True, validate=_TOKEN)


class WhoAmISchema(Schema):
    user_id = fields.String(required=True)
    username = fields.String(required=True)
    roles = fields.List(fields.String(), required=True)


class HeaderAuth:
    """Trusts the proxy: the user header names the caller, the roles header lists roles."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.user_header: str = settings["user_header"]
        self.roles_header: str | None = settings["roles_header"]

    async def authenticate(self, request: Request) -> AuthTuple:
        user = request.headers.get(self.user_header, "").strip()
        if not user:
            raise Unauthorized("No user identity in the request",
                               f"the {self.user_header} header is required")
        roles: frozenset[str] = frozenset()
        if self.roles_header:
            raw = request.headers.get(self.roles_header, "")
            roles = frozenset(r.strip() for r in raw.split(",") if r.strip())
        # Forward the caller's own bearer token, if any; the plugin never mints one.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        forwarded = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        return AuthTuple(user, user, roles, forwarded)


bp = Blueprint("header_auth", __name__)


@route(bp, "/v1/header-auth/whoami")
@doc(summary="The identity the header module read from this request", tags=["header-auth"],
     responses={200: WhoAmISchema})
@authorize(WHOAMI)
async def whoami() -> Any:
    auth: AuthTuple = g.auth
    return jsonify({"user_id": auth.user_id, "username": auth.username,
                    "roles": sorted(auth.roles)})


# --- hooks ------------------------------------------------------------------------------------


@hookimpl
def lcore_auth_providers() -> list[AuthProvider]:
    return [AuthProvider(MODULE, lambda settings, config: HeaderAuth(settings),
                         config_key="header_config", schema=HeaderConfigSchema,
                         description="identity from headers set by a trusted proxy")]


@hookimpl
def lcore_actions() -> list[str]:
    return [WHOAMI]


@hookimpl
def lcore_blueprints(config: Config) -> list[Blueprint]:
    return [bp] if config.authentication.module == MODULE else []


@hookimpl
def lcore_readiness(runtime: Runtime) -> list[ReadinessCheck]:
    if runtime.config.authentication.module != MODULE:
        return []

    async def check() -> str | None:
        if not isinstance(runtime.authenticator, HeaderAuth):
            return (f"authentication.module is {MODULE!r} but the authenticator is "
                    f"{type(runtime.authenticator).__name__}")
        return None

    return [ReadinessCheck("header-auth", check)]
