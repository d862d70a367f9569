"""Hook implementations of lcore-auth-jwk: the `jwk-token` authentication module."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
                         description="JWT bearer tokens verified against a JWKS (authlib)")]


@hookimpl
async def lcore_shutdown(runtime: Runtime) -> None:
    if isinstance(runtime.authenticator, JwkTokenAuth):
        await runtime.authenticator.close()
