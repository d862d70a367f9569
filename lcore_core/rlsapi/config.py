"""The configuration sections `rlsapi_v1`, `splunk` and `deployment_environment` (upstream's keys).

This module must not import `lcore_core.config.schema` at import time: that module imports this
one to build its section table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

QUOTA_SUBJECTS = ("user_id", "org_id", "system_id")
# Subjects read from the X-RH-Identity header: meaningless under any other authentication.
RH_IDENTITY_SUBJECTS = ("org_id", "system_id")
RH_IDENTITY_MODULE = "rh-identity"
DEFAULT_DEPLOYMENT_ENVIRONMENT = "development"


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class RlsapiV1Schema(_Strict):
    # Honour a request's `include_metadata` (tool calls, RAG chunks, token counts); off in
    # production, as upstream advises.
    allow_verbose_infer = fields.Boolean(load_default=False)
    # Whose token quota a /v1/infer call spends; null: /v1/infer is not metered (as upstream).
    quota_subject = fields.String(load_default=None, allow_none=True,
                                  validate=validate.OneOf(QUOTA_SUBJECTS))


def _http_url(value: str) -> None:
    # Imported here: the core schema module imports this one.
    from lcore_core.config.schema import HTTP_URL

    HTTP_URL(value)


def _existing_file(value: str) -> None:
    if not Path(value).expanduser().is_file():
        raise ValidationError(f"file {value!r} does not exist")


class SplunkSchema(_Strict):
    enabled = fields.Boolean(load_default=False)
    url = fields.String(load_default=None, allow_none=True, validate=_http_url)
    # A file holding the HEC token; read for every event, so the token can rotate in place.
    token_path = fields.String(load_default=None, allow_none=True, validate=_existing_file)
    index = fields.String(load_default=None, allow_none=True)
    source = fields.String(load_default="lightspeed-stack")
    timeout = fields.Integer(load_default=5, validate=validate.Range(min=1))
    verify_ssl = fields.Boolean(load_default=True)
    # LCore addition: events waiting to be sent; beyond this, new events are dropped (logged).
    queue_size = fields.Integer(load_default=1000, strict=True,
                                validate=validate.Range(min=1, max=1_000_000))

    @validates_schema
    def _complete(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("enabled"):
            return
        missing = [key for key in ("url", "token_path", "index") if not data.get(key)]
        if missing:
            # Upstream's wording, reported at the first missing key.
            raise ValidationError("Splunk is enabled but required fields are missing: "
                                  f"{', '.join(missing)}", missing[0])


def rlsapi_sections() -> dict[str, fields.Field]:
    """The top-level fields these sections add to lightspeed-stack.yaml's schema."""
    return {
        "rlsapi_v1": fields.Nested(RlsapiV1Schema, load_default=lambda: RlsapiV1Schema().load({})),
        "splunk": fields.Nested(SplunkSchema, load_default=None, allow_none=True),
        "deployment_environment": fields.String(load_default=DEFAULT_DEPLOYMENT_ENVIRONMENT),
    }


def cross_section_errors(loaded: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], str]]:
    """Rules spanning sections: (key path, message) for each problem."""
    subject = (loaded.get("rlsapi_v1") or {}).get("quota_subject")
    module = (loaded.get("authentication") or {}).get("module")
    if subject in RH_IDENTITY_SUBJECTS and module != RH_IDENTITY_MODULE:
        yield (("rlsapi_v1", "quota_subject"),
               f"quota_subject {subject!r} is read from the X-RH-Identity header and needs "
               f"authentication.module: {RH_IDENTITY_MODULE}, not {module!r}; use "
               f"quota_subject: user_id or switch authentication to {RH_IDENTITY_MODULE}")
