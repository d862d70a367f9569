"""Unified mode: the sections from which LCore builds Llama Stack's run.yaml itself.

A unified lightspeed-stack.yaml carries a `llama_stack.config` block (baseline, profile,
native_override) and/or the high-level `inference.providers` and `vector_store.providers`
lists instead of pointing `llama_stack.library_client_config_path` at a run.yaml of its own;
`lcore_core.llama_config` turns them into the run configuration. `check_modes` holds the rules
that span sections (unified and legacy inputs exclude each other, library mode needs one of
them, `config_format_version` must match the file's shape).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

# High-level inference provider types (upstream's vocabulary), each mapped to a Llama Stack
# provider type by the synthesis.
INFERENCE_TYPES = ("openai", "ollama", "vllm", "sentence_transformers", "azure", "vertexai",
                   "watsonx", "vllm_rhaiis", "vllm_rhel_ai")
VECTOR_STORE_TYPES = ("faiss", "pgvector")
BASELINES = ("default", "empty")
FORMAT_VERSIONS = ("legacy", "unified")

# The vector_io provider ids the synthesis gives rag.byok.stores start with this.
BYOK_PREFIX = "byok_"
# Unset pgvector connection fields become references Llama Stack resolves when it starts.
PGVECTOR_ENV = {"host": "${env.POSTGRES_HOST}", "port": "${env.POSTGRES_PORT}",
                "db": "${env.POSTGRES_DATABASE}", "user": "${env.POSTGRES_USER}",
                "password": "${env.POSTGRES_PASSWORD}"}

_PROVIDER_ID = re.compile(r"[a-z0-9_-]+\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Where a unified input lives (for `check_modes`' messages).
UNIFIED_INPUTS = ("llama_stack.config, a non-empty inference.providers or a non-empty "
                  "vector_store.providers")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class ProviderId(fields.String):
    """A Llama Stack provider id: surrounding blanks dropped, then `[a-z0-9_-]+`."""

    def __init__(self, *, reserved_prefix: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reserved_prefix = reserved_prefix

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = str(super()._deserialize(value, attr, data, **kwargs)).strip()
        if not text:
            raise ValidationError("must not be blank")
        if self.reserved_prefix and text.startswith(self.reserved_prefix):
            raise ValidationError(f"must not start with {self.reserved_prefix!r}: that prefix is "
                                  f"kept for the stores of rag.byok.stores")
        if not _PROVIDER_ID.match(text):
            raise ValidationError("may hold only lowercase letters, digits, '_' and '-'")
        return text


class UnifiedLlamaStackSchema(_Strict):
    """`llama_stack.config`: what the synthesis starts from, and what it merges in last."""

    # default: LCore's own offline baseline (lcore_core/data/default-run.yaml); empty: {}.
    baseline = fields.String(load_default="default", validate=validate.OneOf(BASELINES))
    # A run.yaml used as the baseline instead (relative: beside the configuration file).
    profile = fields.String(load_default=None, allow_none=True,
                            validate=validate.Length(min=1))
    # Llama Stack's own keys, deep-merged last: mappings merge, lists and scalars replace.
    native_override = fields.Dict(keys=fields.String(), load_default=dict)


class InferenceProviderSchema(_Strict):
    """One `inference.providers` entry: a Llama Stack inference provider in a few keys."""

    type = fields.String(required=True, validate=validate.OneOf(INFERENCE_TYPES))
    # The Llama Stack provider_id; default: the type with '_' written '-'.
    id = ProviderId(load_default=None, allow_none=True)
    # Written to run.yaml as ${env.NAME}: the key itself never reaches the file.
    api_key_env = fields.String(load_default=None, allow_none=True, validate=validate.Regexp(
        _ENV_NAME, error="not an environment variable name"))
    allowed_models = fields.List(fields.String(), load_default=None, allow_none=True)
    # Further keys of the provider's config, copied as they are.
    extra = fields.Dict(keys=fields.String(), load_default=dict)


class FaissStoreConfigSchema(_Strict):
    path = fields.String(required=True, validate=validate.Length(min=1))


class PgvectorStoreConfigSchema(_Strict):
    host = fields.String(load_default=PGVECTOR_ENV["host"])
    port = fields.Raw(load_default=PGVECTOR_ENV["port"])
    db = fields.String(load_default=PGVECTOR_ENV["db"])
    user = fields.String(load_default=PGVECTOR_ENV["user"])
    password = fields.String(load_default=PGVECTOR_ENV["password"])

    @validates_schema
    def _port(self, data: dict[str, Any], **_: Any) -> None:
        port = data.get("port")
        if isinstance(port, bool) or not isinstance(port, int | str):
            raise ValidationError("must be a number or a string", "port")


_STORE_CONFIGS: dict[str, type[Schema]] = {"faiss": FaissStoreConfigSchema,
                                           "pgvector": PgvectorStoreConfigSchema}


class VectorStoreProviderSchema(_Strict):
    """A vector_io provider new vector stores can be created in (not a store of its own)."""

    id = ProviderId(required=True, reserved_prefix=BYOK_PREFIX)
    type = fields.String(required=True, validate=validate.OneOf(VECTOR_STORE_TYPES))
    embedding_model = fields.String(required=True, validate=validate.Length(min=1))
    embedding_dimension = fields.Integer(required=True, validate=validate.Range(min=1))
    # faiss: {path}; pgvector: {host, port, db, user, password}, each defaulting to POSTGRES_*.
    config = fields.Dict(keys=fields.String(), required=True)

    @validates_schema
    def _config(self, data: dict[str, Any], **_: Any) -> None:
        schema = _STORE_CONFIGS[data["type"]]
        try:
            data["config"] = schema().load(data["config"])
        except ValidationError as exc:
            raise ValidationError({"config": exc.messages}) from None


def _unique_ids(entries: list[dict[str, Any]]) -> list[str]:
    ids = [str(e.get("id")) for e in entries]
    return sorted({i for i in ids if ids.count(i) > 1})


class VectorStoreSchema(_Strict):
    """`vector_store`: providers for stores created at run time, and which one is the default."""

    default_provider = fields.String(load_default=None, allow_none=True)
    providers = fields.List(fields.Nested(VectorStoreProviderSchema), load_default=list)

    @validates_schema
    def _default(self, data: dict[str, Any], **_: Any) -> None:
        providers = data.get("providers") or []
        default = data.get("default_provider")
        if not providers:
            if default is not None:
                raise ValidationError("must not be set while providers is empty",
                                      "default_provider")
            return
        twice = _unique_ids(providers)
        if twice:
            raise ValidationError(f"provider ids must be unique; repeated: {', '.join(twice)}",
                                  "providers")
        if default is None:
            raise ValidationError("required when providers is not empty", "default_provider")
        default = default.strip()
        if not default:
            raise ValidationError("must not be blank", "default_provider")
        ids = [p["id"] for p in providers]
        if default not in ids:
            raise ValidationError(f"{default!r} is not one of the providers' ids: "
                                  f"{', '.join(ids)}", "default_provider")
        data["default_provider"] = default


class AzureEntraIdSchema(_Strict):
    """`azure_entra_id`: the Entra ID application an Azure OpenAI provider authenticates as."""

    tenant_id = fields.String(required=True, validate=validate.Length(min=1))
    client_id = fields.String(required=True, validate=validate.Length(min=1))
    client_secret = fields.String(required=True, validate=validate.Length(min=1))
    scope = fields.String(load_default="https://cognitiveservices.azure.com/.default",
                          validate=validate.Length(min=1))

    @validates_schema
    def _installed(self, data: dict[str, Any], **_: Any) -> None:
        try:
            import authlib.integrations.httpx_client  # noqa: F401
        except ImportError:
            raise ValidationError("LCore obtains the Entra ID tokens with authlib, which is not "
                                  "installed: pip install 'lcore-core[azure]'",
                                  "tenant_id") from None


KeyPath = tuple[str | int, ...]


def has_unified_input(config: Any) -> bool:
    """Whether a loaded configuration asks LCore to build Llama Stack's run.yaml."""
    llama = config.get("llama_stack") or {}
    inference = config.get("inference") or {}
    vector_store = config.get("vector_store") or {}
    return (llama.get("config") is not None or bool(inference.get("providers"))
            or bool(vector_store.get("providers")))


def check_modes(loaded: dict[str, Any], base_dir: Path | None) -> list[tuple[KeyPath, str]]:
    """The rules that span sections, as (key path, message) pairs.

    Also resolves a relative `llama_stack.config.profile` against `base_dir` (the configuration
    file's directory), so the loaded configuration names the file it was checked against.
    """
    problems: list[tuple[KeyPath, str]] = []
    llama = loaded.get("llama_stack")
    if not isinstance(llama, dict):
        return problems  # already reported by the schema
    unified = has_unified_input(loaded)
    legacy = llama.get("library_client_config_path") is not None
    if unified and legacy:
        problems.append((("llama_stack", "library_client_config_path"),
                         f"a run.yaml of your own (library_client_config_path) and the inputs "
                         f"LCore builds one from ({UNIFIED_INPUTS}) exclude each other: keep "
                         f"one; `lcore config migrate` turns a legacy pair into one unified "
                         f"file"))
    elif llama.get("use_as_library_client") and not unified and not legacy:
        problems.append((("llama_stack", "use_as_library_client"),
                         f"library mode needs a run configuration: library_client_config_path "
                         f"or {UNIFIED_INPUTS}"))
    if unified and llama.get("use_as_library_client") and llama.get("backend") == "ogx":
        problems.append((("llama_stack", "backend"),
                         f"library mode on OGX reads an OGX run configuration, and LCore "
                         f"writes Llama Stack 0.7 ones: give OGX's in "
                         f"library_client_config_path instead of {UNIFIED_INPUTS}"))
    declared = loaded.get("config_format_version")
    shape = "unified" if unified else "legacy"
    if declared is not None and declared != shape:
        problems.append((("config_format_version",),
                         f"is {declared!r} but the file is {shape}-shaped (a unified file "
                         f"has {UNIFIED_INPUTS}; a legacy one has none of them): correct one "
                         f"or the other"))
    block = llama.get("config")
    if isinstance(block, dict) and block.get("profile"):
        path = Path(block["profile"]).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            problems.append((("llama_stack", "config", "profile"),
                             f"profile {str(path)!r} does not exist"))
        else:
            block["profile"] = str(path.resolve())
            trouble = _not_a_run_configuration(path)
            if trouble:
                problems.append((("llama_stack", "config", "profile"), trouble))
    return problems


def _not_a_run_configuration(path: Path) -> str | None:
    """Why the profile cannot be a baseline (not YAML, not a mapping), or None."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError

    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return f"cannot read {str(path)!r}: {exc.strerror}"
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        return f"{where}: invalid YAML: {exc.problem}"
    if not isinstance(data, dict):
        return f"{str(path)!r} must hold a mapping (a Llama Stack run configuration)"
    return None
