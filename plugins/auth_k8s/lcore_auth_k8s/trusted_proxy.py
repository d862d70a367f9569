"""`trusted-proxy`: a proxy in the cluster authenticates the end user and calls LCore with its own
service-account token plus a header naming that user.

The proxy's token is reviewed by the API server (TokenReview) and, when
`trusted_proxy_config.allowed_service_accounts` lists any, must belong to one of them; the caller
is then whoever the user header names, with no roles and no token to forward. Outcomes of the
review are cached like the `k8s` module's (`k8s_config.cache_ttl_seconds`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from lcore_auth_k8s.api import KubeApi, ReviewCache
from lcore_core import AuthTuple, Forbidden, Unauthorized

if TYPE_CHECKING:
    from quart import Request

log = logging.getLogger("lcore.auth.trusted_proxy")

MAX_TOKEN_BYTES = 16 * 1024
# A Kubernetes user name is at most a few hundred bytes (an e-mail, a DNS subdomain).
MAX_USER_BYTES = 1024
SERVICE_ACCOUNT = "system:serviceaccount:{namespace}:{name}"
_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


class ServiceAccountSchema(Schema):
    class Meta:
        unknown = RAISE

    namespace = fields.String(required=True, validate=validate.Length(min=1))
    name = fields.String(required=True, validate=validate.Length(min=1))


class TrustedProxySchema(Schema):
    """`authentication.trusted_proxy_config` (upstream's keys and defaults)."""

    class Meta:
        unknown = RAISE

    user_header = fields.String(load_default="X-Forwarded-User", validate=validate.Regexp(
        _HEADER_NAME, error="must be an HTTP header name"))
    # None or empty: any service account with a valid token may act as the proxy.
    allowed_service_accounts = fields.List(fields.Nested(ServiceAccountSchema),
                                           load_default=None, allow_none=True)

    @validates("user_header")
    def _not_the_token(self, value: str, **_: Any) -> None:
        if value.lower() == "authorization":
            raise ValidationError("must not be Authorization, which carries the proxy's token")


class TrustedProxyAuth:
    """The end user named by a header, vouched for by a reviewed service-account token."""

    def __init__(self, api: KubeApi, settings: dict[str, Any], cache: ReviewCache[str]) -> None:
        self.api = api
        self.user_header: str = settings["user_header"]
        self.allowed = frozenset(SERVICE_ACCOUNT.format(**sa)
                                 for sa in settings.get("allowed_service_accounts") or ())
        self._cache = cache

    async def close(self) -> None:
        await self.api.close()

    async def authenticate(self, request: Request) -> AuthTuple:
        proxy = await self._proxy(self._token(request))
        user = (request.headers.get(self.user_header) or "").strip()
        if not user:
            raise Unauthorized(cause=f"Missing required header '{self.user_header}'")
        if len(user.encode()) > MAX_USER_BYTES:
            raise Unauthorized(cause=f"Header '{self.user_header}' larger than "
                                     f"{MAX_USER_BYTES} bytes")
        log.debug("trusted-proxy: request forwarded by %s", proxy)
        # As upstream: the user is both id and name, and the proxy's token is not forwarded.
        return AuthTuple(user, user, frozenset(), None, skip_user_id_check=True)

    @staticmethod
    def _token(request: Request) -> str:
        header = request.headers.get("Authorization", "")
        if not header:
            raise Unauthorized(cause="Missing Authorization header")
        if len(header) > MAX_TOKEN_BYTES:
            raise Unauthorized(cause=f"Token larger than {MAX_TOKEN_BYTES} bytes")
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise Unauthorized(cause="No token found in Authorization header")
        return parts[1]

    async def _proxy(self, token: str) -> str:
        """The proxy's service-account name, or the refusal of its token."""
        return await self._cache.outcome(token, self._review)

    async def _review(self, token: str) -> str:
        status = await self.api.token_review(token)
        if not status.get("authenticated"):
            log.info("trusted-proxy: token rejected by TokenReview: %s",
                     status.get("error") or "-")
            raise Unauthorized(cause="Invalid or expired proxy service account token")
        user = status.get("user")
        if not isinstance(user, dict) or not user:
            raise Unauthorized(cause="Invalid service account token: missing user information")
        username = user.get("username")
        if not isinstance(username, str) or not username:
            raise Unauthorized(cause="Invalid service account token: missing username")
        if self.allowed and username not in self.allowed:
            log.warning("trusted-proxy: service account %r is not in "
                        "trusted_proxy_config.allowed_service_accounts", username)
            raise Forbidden("User does not have permission to access this endpoint",
                            f"User {username} is not authorized to access this endpoint.")
        return username
