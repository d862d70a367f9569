"""`rh-identity`: the `X-RH-Identity` header (base64 JSON) set by Red Hat's API gateway.

Identity types as upstream: `User` (identity.user.user_id / username), `System` (system.cn /
account_number) and `ServiceAccount` (service_account.client_id / username). Header problems are
400, a missing header 401, missing entitlements 403.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, fields, validate
from quart import g, has_request_context

from lcore_core import jsonsafe
from lcore_core.auth import AuthTuple
from lcore_core.errors import BadRequest, Forbidden, Unauthorized

if TYPE_CHECKING:
    from quart import Request

log = logging.getLogger("lcore.auth.rh_identity")
HEADER = "X-RH-Identity"
MAX_FIELD = 256

# identity.type -> (object key, user id field, username field, username taken from identity)
_TYPES = {
    "User": ("user", "user_id", "username"),
    "ServiceAccount": ("service_account", "client_id", "username"),
    "System": ("system", "cn", None),
}


# What `identity_context` gives for a value the request did not carry (upstream's marker).
AUTH_DISABLED = "auth_disabled"


def identity_context() -> tuple[str, str]:
    """(org_id, system_id) of the current request's X-RH-Identity, as upstream reports them.

    system_id is the identity's own id (system.cn, user.user_id or service_account.client_id);
    either is `AUTH_DISABLED` when the request was not authenticated by rh-identity or the
    header left it empty.
    """
    remembered = g.get("rh_identity") if has_request_context() else None
    if remembered is None:
        return AUTH_DISABLED, AUTH_DISABLED
    org_id, system_id = remembered
    return org_id or AUTH_DISABLED, system_id or AUTH_DISABLED


class RhIdentitySchema(Schema):
    required_entitlements = fields.List(fields.String(validate=validate.Length(min=1)),
                                        load_default=list, allow_none=True)
    max_header_size = fields.Integer(load_default=8192, validate=validate.Range(min=256))


def _invalid(cause: str, response: str = "Invalid identity data") -> BadRequest:
    log.info("rh-identity refused: %s", cause)
    return BadRequest(response, cause)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"{name} must be a non-empty string")
    if len(value) > MAX_FIELD or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _invalid(f"{name} is too long or has control characters")
    return value


class RhIdentityAuth:
    def __init__(self, settings: dict[str, Any] | None) -> None:
        settings = settings or RhIdentitySchema().load({})
        self.required: list[str] = list(settings.get("required_entitlements") or [])
        self.max_size: int = settings["max_header_size"]

    async def authenticate(self, request: Request) -> AuthTuple:
        raw = request.headers.get(HEADER)
        # Upstream's response texts for the header's own faults; the cause says more.
        if not raw:
            raise Unauthorized("Missing x-rh-identity header", f"the {HEADER} header is required")
        if len(raw) > self.max_size:
            raise _invalid(f"{HEADER} header exceeds {self.max_size} bytes",
                           "x-rh-identity header exceeds maximum allowed size")
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(f"{HEADER} is not base64-encoded",
                           "Invalid base64 encoding in x-rh-identity header") from None
        try:
            data = jsonsafe.loads(decoded.decode("utf-8"))
        except jsonsafe.TooDeep as exc:
            raise _invalid(f"{HEADER}: {exc}", "Invalid JSON in x-rh-identity header") from None
        except (ValueError, UnicodeDecodeError):
            raise _invalid(f"{HEADER} is not JSON",
                           "Invalid JSON in x-rh-identity header") from None
        identity = data.get("identity") if isinstance(data, dict) else None
        if not isinstance(identity, dict):
            raise _invalid("missing 'identity' object")
        kind = identity.get("type")
        if kind not in _TYPES:
            raise _invalid(f"unsupported identity type {str(kind)[:40]!r}; expected one of "
                           f"{', '.join(_TYPES)}")
        key, id_field, name_field = _TYPES[kind]
        subject = identity.get(key)
        if not isinstance(subject, dict):
            raise _invalid(f"identity type {kind} needs an 'identity.{key}' object")
        user_id = _text(subject.get(id_field), f"identity.{key}.{id_field}")
        if name_field is None:
            username = _text(identity.get("account_number"), "identity.account_number")
        else:
            username = _text(subject.get(name_field), f"identity.{key}.{name_field}")
        if identity.get("org_id") not in (None, ""):
            _text(identity["org_id"], "identity.org_id")
        self._check_entitlements(data.get("entitlements"), user_id)
        if has_request_context():  # for telemetry and quota subjects (`identity_context`)
            g.rh_identity = (str(identity.get("org_id") or ""), user_id)
        return AuthTuple(user_id, username, frozenset())

    def _check_entitlements(self, entitlements: Any, user_id: str) -> None:
        if not self.required:
            return
        granted = entitlements if isinstance(entitlements, dict) else {}
        missing = [name for name in self.required
                   if not (isinstance(granted.get(name), dict)
                           and granted[name].get("is_entitled") is True)]
        if missing:
            log.info("rh-identity: %s lacks entitlements %s", user_id, missing)
            raise Forbidden("Insufficient entitlements",
                            f"missing required entitlement(s): {', '.join(missing)}")
