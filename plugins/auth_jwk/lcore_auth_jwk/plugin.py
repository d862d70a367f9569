"""Hook implementations of lcore-auth-jwk: the `jwk-token` authentication module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lcore_auth_jwk.auth import JwkTokenAuth
from lcore_auth_jwk.config import JwkConfigSchema
from lcore_core import AuthProvider, hookimpl

if TYPE_CHECKING:
    from lcore_core import Runtime

MODULE = "jwk-token"


@hookimpl
def lcore_auth_providers() -> list[AuthProvider]:
    return [AuthProvider(MODULE, lambda settings, config: JwkTokenAuth(settings),
                         config_key="jwk_config", schema=JwkConfigSchema, required=True,
                         access_rules=_has_role_rules,
                         description="JWT bearer tokens verified against a JWKS (authlib)")]


def _has_role_rules(settings: dict[str, Any] | None) -> bool:
    # As upstream: without role rules no caller has a role, and access rules are not applied.
    return bool(settings and settings["jwt_configuration"]["role_rules"])


@hookimpl
async def lcore_shutdown(runtime: Runtime) -> None:
    if isinstance(runtime.authenticator, JwkTokenAuth):
        await runtime.authenticator.close()
