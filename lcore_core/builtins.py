"""The core's own providers, registered like any plugin: noop / noop-with-token / api-key-token /
rh-identity authentication, the memory and noop caches, and RBAC authorization."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from lcore_core.auth import (
    DEFAULT_USER_ID,
    DEFAULT_USERNAME,
    AuthTuple,
    RbacResolver,
    applied_access_rules,
    bearer_token,
    require_bearer,
)
from lcore_core.cache import DEFAULT_MAX_BYTES, MemoryCache, NoopCache
from lcore_core.errors import BadRequest, Unauthorized
from lcore_core.hookspecs import hookimpl
from lcore_core.providers import AuthProvider, CacheBackend
from lcore_core.rh_identity import RhIdentityAuth, RhIdentitySchema

if TYPE_CHECKING:
    from quart import Request

    from lcore_core.config import Config

log = structlog.get_logger("lcore.auth")


class NoopAuth:
    """Everyone is the default user (a `user_id` query parameter may name another)."""

    def __init__(self, *, need_token: bool = False) -> None:
        self.need_token = need_token

    async def authenticate(self, request: Request) -> AuthTuple:
        token = require_bearer(request) if self.need_token else bearer_token(request)
        user_id = request.args.get("user_id", DEFAULT_USER_ID)
        if not user_id:
            # upstream's text ("?user_id=" names nobody; it does not mean the default user)
            raise BadRequest("user_id cannot be empty",
                             "The user_id query parameter is empty: leave it out or name a user")
        return AuthTuple(user_id, DEFAULT_USERNAME, frozenset(), token, skip_user_id_check=True)


class ApiKeySchema(Schema):
    api_key = fields.String(load_default=None, allow_none=True)
    api_keys = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    api_key_file = fields.String(load_default=None, allow_none=True)

    @validates_schema
    def _some(self, data: dict[str, Any], **_: Any) -> None:
        if not (data.get("api_key") or data.get("api_keys") or data.get("api_key_file")):
            raise ValidationError("give api_key, api_keys or api_key_file", "api_key")
        file = data.get("api_key_file")
        if file and not Path(file).is_file():
            raise ValidationError(f"file {file!r} does not exist", "api_key_file")


class ApiKeyAuth:
    """A bearer token that must equal one configured key (compared in constant time)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        keys = [settings.get("api_key"), *settings.get("api_keys", [])]
        if settings.get("api_key_file"):
            text = Path(settings["api_key_file"]).read_text(encoding="utf-8")
            keys.extend(line.strip() for line in text.splitlines())
        self._keys = [k.encode() for k in keys if k]

    async def authenticate(self, request: Request) -> AuthTuple:
        token = require_bearer(request)
        given = token.encode()
        # Compare against every key so timing does not reveal which (or whether one) matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise Unauthorized("Invalid API Key", "The API key is not valid")
        return AuthTuple(DEFAULT_USER_ID, DEFAULT_USERNAME, frozenset(), token,
                         skip_user_id_check=True)


class MemoryCacheSchema(Schema):
    max_entries = fields.Integer(load_default=1000, validate=validate.Range(min=1))
    # LCore addition: entries alone do not bound memory (a turn may hold megabytes of text).
    max_bytes = fields.Integer(load_default=DEFAULT_MAX_BYTES,
                               validate=validate.Range(min=1024 * 1024))


@hookimpl
def lcore_auth_providers() -> list[AuthProvider]:
    return [
        # As upstream, access rules do not judge the callers of these three modules.
        AuthProvider("noop", lambda settings, config: NoopAuth(), access_rules=False,
                     description="no authentication; every caller is the default user"),
        AuthProvider("noop-with-token", lambda settings, config: NoopAuth(need_token=True),
                     access_rules=False,
                     description="a Bearer token is required and forwarded, not checked"),
        AuthProvider("api-key-token", lambda settings, config: ApiKeyAuth(settings),
                     config_key="api_key_config", schema=ApiKeySchema, required=True,
                     access_rules=False,
                     description="a Bearer token that must match a configured API key"),
        AuthProvider("rh-identity", lambda settings, config: RhIdentityAuth(settings),
                     config_key="rh_identity_config", schema=RhIdentitySchema,
                     description="the X-RH-Identity header of Red Hat's API gateway"),
    ]


@hookimpl
def lcore_cache_backends() -> list[CacheBackend]:
    return [
        CacheBackend("memory", lambda settings, config: MemoryCache(settings["max_entries"],
                                                                    settings["max_bytes"]),
                     schema=MemoryCacheSchema, description="in-process, bounded"),
        CacheBackend("noop", lambda settings, config: NoopCache(), description="keeps nothing"),
    ]


class Rbac:
    """The default authorizer: `authorization.access_rules`, where they apply to the selected
    authentication module (`applied_access_rules`). Registered per app by the core."""

    def __init__(self, config: Config, provider: AuthProvider) -> None:
        rules = applied_access_rules(config, provider)
        authz = config.get("authorization")
        if rules is None and authz and authz["access_rules"]:
            log.warning("access rules not applied: as upstream, this authentication module "
                        "allows every action (set authorization.always_apply_access_rules: "
                        "true to apply them)", module=config.authentication.module)
        self.resolver = RbacResolver(rules)

    @hookimpl(trylast=True)
    def lcore_authorize(self, auth: AuthTuple, action: str) -> bool:
        return self.resolver.allowed(auth, action)
