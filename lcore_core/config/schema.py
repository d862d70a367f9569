"""marshmallow schemas for the core's sections of lightspeed-stack.yaml (upstream's format)."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

Port = fields.Integer(validate=validate.Range(1, 65535))


class Base(Schema):
    class Meta:
        unknown = RAISE


def section(schema: type[Schema], **kwargs: Any) -> fields.Nested:
    """A nested section that defaults to its own defaults when absent."""
    return fields.Nested(schema, load_default=lambda: schema().load({}), **kwargs)


def optional(schema: type[Schema], **kwargs: Any) -> fields.Nested:
    return fields.Nested(schema, load_default=None, allow_none=True, **kwargs)


class TLSSchema(Base):
    tls_certificate_path = fields.String(load_default=None, allow_none=True)
    tls_key_path = fields.String(load_default=None, allow_none=True)
    tls_key_password = fields.String(load_default=None, allow_none=True)


class CORSSchema(Base):
    allow_origins = fields.List(fields.String(), load_default=lambda: ["*"])
    allow_credentials = fields.Boolean(load_default=False)
    allow_methods = fields.List(fields.String(), load_default=lambda: ["*"])
    allow_headers = fields.List(fields.String(), load_default=lambda: ["*"])

    @validates_schema
    def _credentials(self, data: dict[str, Any], **_: Any) -> None:
        if data["allow_credentials"] and "*" in data["allow_origins"]:
            raise ValidationError("allow_credentials cannot be true when allow_origins has '*'",
                                  "allow_credentials")


class ServiceSchema(Base):
    host = fields.String(load_default="localhost")
    port = fields.Integer(load_default=8080, validate=validate.Range(1, 65535))
    base_url = fields.String(load_default=None, allow_none=True)
    auth_enabled = fields.Boolean(load_default=False)
    workers = fields.Integer(load_default=1, validate=validate.Range(min=1))
    color_log = fields.Boolean(load_default=True)
    access_log = fields.Boolean(load_default=True)
    root_path = fields.String(load_default="")
    tls_config = section(TLSSchema)
    cors = section(CORSSchema)
    # LCore additions
    max_request_size = fields.Integer(load_default=10 * 1024 * 1024,
                                      validate=validate.Range(min=1024))
    log_format = fields.String(load_default="json", validate=validate.OneOf(["json", "console"]))


class LlamaStackSchema(Base):
    url = fields.String(load_default=None, allow_none=True)
    api_key = fields.String(load_default=None, allow_none=True)
    use_as_library_client = fields.Boolean(load_default=None, allow_none=True)
    library_client_config_path = fields.String(load_default=None, allow_none=True)
    timeout = fields.Float(load_default=180.0, validate=validate.Range(min=0, min_inclusive=False))

    @validates_schema
    def _mode(self, data: dict[str, Any], **_: Any) -> None:
        library = data.get("use_as_library_client")
        if library is None:
            library = data.get("library_client_config_path") is not None and not data.get("url")
            data["use_as_library_client"] = library
        if library and not data.get("library_client_config_path"):
            raise ValidationError("library mode needs library_client_config_path",
                                  "library_client_config_path")
        if not library and not data.get("url"):
            raise ValidationError("give url (server mode) or use_as_library_client: true with "
                                  "library_client_config_path (library mode)", "url")


class UserDataCollectionSchema(Base):
    feedback_enabled = fields.Boolean(load_default=False)
    feedback_storage = fields.String(load_default=None, allow_none=True)
    transcripts_enabled = fields.Boolean(load_default=False)
    transcripts_storage = fields.String(load_default=None, allow_none=True)

    @validates_schema
    def _storage(self, data: dict[str, Any], **_: Any) -> None:
        for kind in ("feedback", "transcripts"):
            if data[f"{kind}_enabled"] and not data[f"{kind}_storage"]:
                raise ValidationError(f"{kind}_storage is required when {kind} is enabled",
                                      f"{kind}_storage")


class AccessRuleSchema(Base):
    role = fields.String(required=True)
    actions = fields.List(fields.String(), required=True)
    inherits = fields.List(fields.String(), load_default=list)


class AuthorizationSchema(Base):
    access_rules = fields.List(fields.Nested(AccessRuleSchema), load_default=list)
    # LCore addition: rules in a separate authorization.yaml (merged after access_rules).
    rules_file = fields.String(load_default=None, allow_none=True)


class SQLiteSchema(Base):
    db_path = fields.String(required=True)


class PostgresSchema(Base):
    host = fields.String(load_default="localhost")
    port = fields.Integer(load_default=5432, validate=validate.Range(1, 65535))
    db = fields.String(required=True)
    user = fields.String(required=True)
    password = fields.String(load_default="")
    password_path = fields.String(load_default=None, allow_none=True)
    namespace = fields.String(load_default="lightspeed-stack")
    ssl_mode = fields.String(load_default="prefer", validate=validate.OneOf(
        ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]))
    gss_encmode = fields.String(load_default="prefer",
                                validate=validate.OneOf(["disable", "prefer", "require"]))
    ca_cert_path = fields.String(load_default=None, allow_none=True)
    max_connections = fields.Integer(load_default=10, validate=validate.Range(min=1))


def one_of_backends(data: dict[str, Any]) -> None:
    present = [k for k in ("sqlite", "postgres") if data.get(k) is not None]
    if len(present) > 1:
        raise ValidationError("configure only one of sqlite, postgres", present[1])


class DatabaseSchema(Base):
    sqlite = optional(SQLiteSchema)
    postgres = optional(PostgresSchema)

    @validates_schema
    def _one(self, data: dict[str, Any], **_: Any) -> None:
        one_of_backends(data)


class MCPServerSchema(Base):
    name = fields.String(required=True, validate=validate.Length(min=1))
    provider_id = fields.String(load_default="model-context-protocol")
    url = fields.String(required=True, validate=validate.URL(schemes={"http", "https"},
                                                             require_tld=False))
    timeout = fields.Float(load_default=None, allow_none=True)
    headers = fields.List(fields.String(), load_default=list)
    authorization_headers = fields.Dict(keys=fields.String(), values=fields.String(),
                                        load_default=dict)


class CustomizationSchema(Base):
    profile_path = fields.String(load_default=None, allow_none=True)
    disable_query_system_prompt = fields.Boolean(load_default=False)
    disable_shield_ids_override = fields.Boolean(load_default=False)
    system_prompt_path = fields.String(load_default=None, allow_none=True)
    system_prompt = fields.String(load_default=None, allow_none=True)
    agent_card_path = fields.String(load_default=None, allow_none=True)
    agent_card_config = fields.Dict(load_default=None, allow_none=True)


class InferenceSchema(Base):
    default_model = fields.String(load_default=None, allow_none=True)
    default_provider = fields.String(load_default=None, allow_none=True)

    @validates_schema
    def _pair(self, data: dict[str, Any], **_: Any) -> None:
        if (data["default_model"] is None) != (data["default_provider"] is None):
            missing = "default_provider" if data["default_provider"] is None else "default_model"
            raise ValidationError("default_model and default_provider go together", missing)


class PluginsSchema(Base):
    """LCore addition: plugins named here are not loaded even when installed."""

    blocked = fields.List(fields.String(), load_default=list)


CORE_SECTIONS: dict[str, fields.Field] = {
    "name": fields.String(load_default="LCore"),
    "service": section(ServiceSchema),
    "llama_stack": fields.Nested(LlamaStackSchema, required=True),
    "user_data_collection": section(UserDataCollectionSchema),
    "authorization": optional(AuthorizationSchema),
    "database": section(DatabaseSchema),
    "mcp_servers": fields.List(fields.Nested(MCPServerSchema), load_default=list),
    "customization": optional(CustomizationSchema),
    "inference": section(InferenceSchema),
    "plugins": section(PluginsSchema),
}

# Sections of upstream's file that belong to an LCore plugin: a hint when it is not installed.
PLUGIN_SECTIONS = {"quota_handlers": "lcore-quota", "a2a_state": "lcore-a2a"}

# Upstream features LCore does not have: refused by name rather than as "unknown key".
UNSUPPORTED_SECTIONS = {
    "byok_rag": "bring-your-own-knowledge RAG",
    "rlsapi_v1": "the RHEL Lightspeed rlsapi v1 endpoint",
    "splunk": "Splunk event forwarding",
    "deployment_environment": "deployment environment tagging",
    "solr": "Solr vector search",
    "okp": "OKP search",
    "conversation_history": "server-side conversation history compaction",
    "a2a": "the A2A client (LCore's A2A plugin serves A2A; see a2a_state)",
}
