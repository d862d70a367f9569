"""`authentication.jwk_config`: upstream's keys plus LCore's verification settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jsonpath_ng import parse as parse_jsonpath
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from lcore_core import HttpUrl

DEFAULT_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
# Asymmetric algorithms only: `none` accepts anything and an HMAC algorithm would let a caller
# sign with the (public) verification key as the shared secret.
ALLOWED_ALGORITHMS = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384",
                      "PS512", "EdDSA"}
OPERATORS = ["equals", "contains", "in", "match"]
_HTTP = HttpUrl()


class _Base(Schema):
    class Meta:
        unknown = RAISE


def _jsonpath(value: str) -> None:
    try:
        parse_jsonpath(value)
    except Exception as exc:  # jsonpath-ng raises several exception types for bad syntax
        raise ValidationError(f"invalid JSONPath expression {value!r}: {exc}") from None


class RoleRuleSchema(_Base):
    jsonpath = fields.String(required=True, validate=_jsonpath)
    operator = fields.String(required=True, validate=validate.OneOf(OPERATORS))
    negate = fields.Boolean(load_default=False)
    value = fields.Raw(required=True, allow_none=True)
    roles = fields.List(fields.String(validate=validate.Length(min=1)), required=True,
                        validate=validate.Length(min=1, error="give at least one role"))

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        roles = data["roles"]
        if len(set(roles)) != len(roles):
            raise ValidationError("roles must be unique", "roles")
        if "*" in roles:
            raise ValidationError("the wildcard role '*' cannot be granted by a rule", "roles")
        if data["operator"] == "match":
            if not isinstance(data["value"], str):
                raise ValidationError("operator match needs a regular expression string",
                                      "value")
            try:
                re.compile(data["value"])
            except re.error as exc:
                raise ValidationError(f"invalid regular expression: {exc}", "value") from None


class JwtConfigurationSchema(_Base):
    user_id_claim = fields.String(load_default="user_id", validate=validate.Length(min=1))
    username_claim = fields.String(load_default="username", validate=validate.Length(min=1))
    role_rules = fields.List(fields.Nested(RoleRuleSchema), load_default=list)


def _algorithm(value: str) -> None:
    if value.lower() == "none" or value.upper().startswith("HS"):
        raise ValidationError(f"algorithm {value!r} is refused: only asymmetric signature "
                              f"algorithms may verify tokens against a public JWKS")
    if value not in ALLOWED_ALGORITHMS:
        raise ValidationError(f"unknown algorithm {value!r}; allowed: "
                              f"{', '.join(sorted(ALLOWED_ALGORITHMS))}")


class JwkConfigSchema(_Base):
    # An http(s) JWKS URL, or the path of a local JWKS file (re-read after jwks_cache_ttl).
    url = fields.String(required=True)
    jwt_configuration = fields.Nested(JwtConfigurationSchema,
                                      load_default=lambda: JwtConfigurationSchema().load({}))
    # LCore additions
    algorithms = fields.List(fields.String(validate=_algorithm),
                             load_default=lambda: list(DEFAULT_ALGORITHMS),
                             validate=validate.Length(min=1))
    issuer = fields.String(load_default=None, allow_none=True)
    audience = fields.String(load_default=None, allow_none=True)
    leeway_seconds = fields.Integer(load_default=30, validate=validate.Range(min=0, max=600))
    jwks_cache_ttl = fields.Integer(load_default=300, validate=validate.Range(min=1))
    jwks_refetch_min_interval = fields.Integer(load_default=10, validate=validate.Range(min=0))
    require_exp = fields.Boolean(load_default=True)
    max_token_size = fields.Integer(load_default=16 * 1024,
                                    validate=validate.Range(min=256, max=1024 * 1024))

    @validates_schema
    def _source(self, data: dict[str, Any], **_: Any) -> None:
        url: str = data["url"]
        if url.startswith(("http://", "https://")):
            try:
                _HTTP(url)
            except ValidationError:
                raise ValidationError(f"not a valid http(s) URL: {url!r}", "url") from None
            return
        path = Path(url.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise ValidationError(f"give an http(s) JWKS URL or an existing JWKS file; "
                                  f"{url!r} is neither", "url")
