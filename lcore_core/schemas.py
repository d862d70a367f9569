"""Request and response shapes (upstream's JSON field names), used for validation and OpenAPI."""

from __future__ import annotations

from marshmallow import Schema, fields


class ErrorDetailSchema(Schema):
    response = fields.String(required=True)
    cause = fields.String(required=True)


class ErrorSchema(Schema):
    detail = fields.Nested(ErrorDetailSchema, required=True)


class LivenessSchema(Schema):
    alive = fields.Boolean(required=True)


class ProviderHealthSchema(Schema):
    provider_id = fields.String(required=True)
    status = fields.String(required=True)
    message = fields.String(allow_none=True)


class ReadinessSchema(Schema):
    ready = fields.Boolean(required=True)
    reason = fields.String(required=True)
    providers = fields.List(fields.Nested(ProviderHealthSchema), required=True)


class PluginInfoSchema(Schema):
    name = fields.String(required=True)
    distribution = fields.String(required=True)
    version = fields.String(required=True)
    hooks = fields.List(fields.String())
    error = fields.String(allow_none=True)


class InfoSchema(Schema):
    name = fields.String(required=True)
    service_version = fields.String(required=True)
    llama_stack_version = fields.String(allow_none=True)
    plugins = fields.List(fields.Nested(PluginInfoSchema))
