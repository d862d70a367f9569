"""Unified mode: building Llama Stack's run configuration from lightspeed-stack.yaml.

`synthesize` takes a loaded configuration (or a plain mapping of the same shape) and returns the
run configuration as a plain dict, in upstream's order:

    baseline (profile file | LCore's default | empty)
    -> azure_entra_id -> rag.byok.stores -> OKP (Solr) -> vector_store.providers
    -> inference.providers -> the MCP tool runtime -> llama_stack.config.native_override

Each stage adds to what came before and leaves an entry it finds with the same id alone (or
replaces it, where a later, more explicit input should win: vector_store and inference
providers). `write_run_config` writes the result atomically, readable by its owner only.
Library mode hands that file to the library client; in server mode `lcore config synthesize`
writes it for `llama stack run`.
"""

from __future__ import annotations

import copy
import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from lcore_core.config.unified import PGVECTOR_ENV
from lcore_core.errors import ConfigError
from lcore_core.files import write_atomically

DEFAULT_BASELINE = Path(__file__).resolve().parent / "data" / "default-run.yaml"
STATE_DIR_TOKEN = "@STATE_DIR@"
DEFAULT_STATE_DIR = "~/.local/share/lcore"
RUN_FILE = "run.yaml"

# High-level inference provider type -> Llama Stack provider type.
PROVIDER_TYPES: dict[str, str] = {
    "openai": "remote::openai",
    "ollama": "remote::ollama",
    "vllm": "remote::vllm",
    "sentence_transformers": "inline::sentence-transformers",
    "azure": "remote::azure",
    "vertexai": "remote::vertexai",
    "watsonx": "remote::watsonx",
    "vllm_rhaiis": "remote::vllm",
    "vllm_rhel_ai": "remote::vllm",
}
# The config key that carries a provider's key; every other provider type calls it api_key.
API_KEY_FIELDS: dict[str, str] = {"remote::vllm": "api_token"}

VECTOR_IO_TYPES: dict[str, str] = {"faiss": "inline::faiss", "pgvector": "remote::pgvector"}
EMBEDDING_PROVIDER = "sentence-transformers"
BYOK_EMBEDDING_MODEL = "sentence-transformers/all-mpnet-base-v2"
BYOK_EMBEDDING_DIMENSION = 768

MCP_PROVIDER = {"provider_id": "model-context-protocol",
                "provider_type": "remote::model-context-protocol", "config": {}}

# OKP (Red Hat's Offline Knowledge Portal) is searched through a Solr vector_io provider.
OKP_ID = "okp"
SOLR_PROVIDER_ID = "okp_solr"
SOLR_STORE_ID = "portal-rag"
SOLR_EMBEDDING_MODEL_ID = "sentence-transformers/solr_embedding"
SOLR_EMBEDDING_MODEL = "ibm-granite/granite-embedding-30m-english"
SOLR_EMBEDDING_DIMENSION = 384
SOLR_DEFAULT_URL = "http://localhost:8081"
SOLR_CHUNK_FILTER = "is_chunk:true"
# LCore's (upstream's) search mode names -> Llama Stack's.
SOLR_SEARCH_MODES = {"lexical": "keyword", "semantic": "vector"}

# `${env.X:+id}`: a provider present only while X is set; it is `id` for matching.
_CONDITIONAL_ID = re.compile(r"\$\{env\.[A-Za-z_][A-Za-z0-9_]*:\+(?P<id>[^}]*)\}\Z")


# --- helpers ----------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A deep copy made of dicts, lists and scalars only (the loaded configuration's mappings
    are dict subclasses, which YAML's safe dumper refuses)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return copy.deepcopy(value)


def _section(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """`overlay` over `base`: mappings merge key by key, lists and scalars replace. A new dict;
    neither argument changes."""
    merged = plain(base)
    for key, value in overlay.items():
        if isinstance(merged.get(key), dict) and isinstance(value, Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = plain(value)
    return merged


def _match_id(provider_id: Any) -> str:
    """The id a provider is matched by: `${env.X:+openai}` is `openai`."""
    text = str(provider_id).strip() if provider_id is not None else ""
    found = _CONDITIONAL_ID.match(text)
    return found.group("id").strip() if found else text


def _providers(run: dict[str, Any], api: str) -> list[Any]:
    section = run.setdefault("providers", {})
    if not isinstance(section, dict):
        raise ConfigError(f"providers must be a mapping, not {type(section).__name__}",
                          key="providers")
    entries = section.get(api)
    if not isinstance(entries, list):
        entries = section[api] = []
    return entries


def _resources(run: dict[str, Any], kind: str) -> list[Any]:
    section = run.setdefault("registered_resources", {})
    entries = section.get(kind)
    if not isinstance(entries, list):
        entries = section[kind] = []
    return entries


def _backends(run: dict[str, Any]) -> dict[str, Any]:
    storage = run.setdefault("storage", {})
    backends = storage.get("backends")
    if not isinstance(backends, dict):
        backends = storage["backends"] = {}
    return backends


def dedupe_vector_io(run: dict[str, Any]) -> None:
    """One vector_io provider per provider_id (the first wins; entries without an id stay)."""
    entries = _section(run.get("providers")).get("vector_io")
    if not isinstance(entries, list):
        return
    seen: set[str] = set()
    kept = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        key = _match_id(entry.get("provider_id"))
        if key and key in seen:
            continue
        if key:
            seen.add(key)
        kept.append(entry)
    run["providers"]["vector_io"] = kept


def _vector_io_config(provider_type: str, backend: str, values: Mapping[str, Any],
                      ) -> dict[str, Any]:
    """A vector_io provider's config: faiss persists in `backend`, pgvector in its database
    (blank connection fields default to the POSTGRES_* variables)."""
    if provider_type == VECTOR_IO_TYPES["faiss"]:
        return {"persistence": {"namespace": "vector_io::faiss", "backend": backend}}
    if provider_type == VECTOR_IO_TYPES["pgvector"]:
        config: dict[str, Any] = {"persistence": {"namespace": "vector_io::pgvector",
                                                  "backend": "kv_default"}}
        for key, default in PGVECTOR_ENV.items():
            value = values.get(key)
            blank = value is None or (isinstance(value, str) and not value.strip())
            config[key] = default if blank else value
        return config
    raise ConfigError(f"unsupported vector store type {provider_type!r}; supported: "
                      f"{', '.join(sorted(VECTOR_IO_TYPES))}")


def _embedding_model(model_id: str, model: str, dimension: Any) -> dict[str, Any]:
    return {"model_id": model_id, "model_type": "embedding", "provider_id": EMBEDDING_PROVIDER,
            "provider_model_id": model.removeprefix(f"{EMBEDDING_PROVIDER}/"),
            "metadata": {"embedding_dimension": dimension}}


# --- the stages -------------------------------------------------------------------------------


def state_directory(config: Mapping[str, Any]) -> Path:
    """`llama_stack.state_dir`, else $LCORE_DATA_DIR, else ~/.local/share/lcore; absolute."""
    configured = _section(config.get("llama_stack")).get("state_dir")
    chosen = configured or os.environ.get("LCORE_DATA_DIR") or DEFAULT_STATE_DIR
    return Path(chosen).expanduser().resolve()


def _read_yaml_mapping(path: Path, key: str) -> dict[str, Any]:
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror}", key=key) from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=str(path),
                          line=mark.line + 1 if mark is not None else None) from None
    if not isinstance(data, dict):
        raise ConfigError("a run configuration must be a mapping", file=str(path), line=1)
    return plain(data)


def default_baseline(state_dir: Path) -> dict[str, Any]:
    """LCore's own baseline with its state under `state_dir`."""
    def place(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: place(v) for k, v in value.items()}
        if isinstance(value, list):
            return [place(v) for v in value]
        if isinstance(value, str):
            return value.replace(STATE_DIR_TOKEN, str(state_dir))
        return value

    return place(_read_yaml_mapping(DEFAULT_BASELINE, "llama_stack.config.baseline"))


def baseline(config: Mapping[str, Any], base_dir: Path | None, state_dir: Path,
             ) -> tuple[dict[str, Any], bool]:
    """The run configuration to start from, and whether it is the empty one."""
    block = _section(config.get("llama_stack")).get("config")
    block = _section(block)
    profile = block.get("profile")
    if profile:
        path = Path(profile).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return _read_yaml_mapping(path, "llama_stack.config.profile"), False
    if block.get("baseline") == "empty":
        return {}, True
    return default_baseline(state_dir), False


def apply_azure_entra_id(run: dict[str, Any], azure: Any) -> None:
    """With Entra ID, Azure providers get a token per request: Llama Stack must not check the
    models with a key at start-up."""
    if not azure:
        return
    for entry in _providers(run, "inference"):
        if isinstance(entry, dict) and entry.get("provider_type") == "remote::azure":
            config = entry.get("config")
            if not isinstance(config, dict):
                config = entry["config"] = {}
            config["model_validation"] = False


def _store_key(store: Mapping[str, Any], index: int, name: str) -> str:
    value = store.get(name)
    if value is None or not str(value).strip():
        raise ConfigError(f"required key {name} is missing",
                          key=f"rag.byok.stores[{index}].{name}")
    return str(value).strip()


def byok_stores(config: Mapping[str, Any]) -> list[Any]:
    """The stores to describe: `rag.byok.stores` as written (upstream's 0.7 layout) and
    `byok_rag` (the 0.6 layout, and where the loaded configuration puts the 0.7 stores too);
    one per rag_id, the first kept."""
    rag = _section(config.get("rag"))
    stores = [*_list(_section(rag.get("byok")).get("stores")), *_list(config.get("byok_rag"))]
    seen: set[str] = set()
    unique = []
    for store in stores:
        rag_id = str(_section(store).get("rag_id") or "")
        if rag_id and rag_id in seen:
            continue
        seen.add(rag_id)
        unique.append(store)
    return unique


def _store_type(store: Mapping[str, Any], index: int) -> tuple[str, str]:
    """(backend, Llama Stack provider type); the 0.6 layout names the provider type itself
    (`rag_type`)."""
    backends = {v: k for k, v in VECTOR_IO_TYPES.items()}
    rag_type = store.get("rag_type")
    if rag_type:
        if str(rag_type) not in backends:
            raise ConfigError(f"unsupported rag_type {rag_type!r}; supported: "
                              f"{', '.join(sorted(backends))}", key=f"byok_rag[{index}].rag_type")
        return backends[str(rag_type)], str(rag_type)
    backend = str(store.get("backend") or "faiss")
    if backend not in VECTOR_IO_TYPES:
        raise ConfigError(f"unsupported backend {backend!r}; supported: "
                          f"{', '.join(sorted(VECTOR_IO_TYPES))}",
                          key=f"rag.byok.stores[{index}].backend")
    return backend, VECTOR_IO_TYPES[backend]


def apply_byok_stores(run: dict[str, Any], stores: list[Any], state_dir: Path) -> None:
    """Each knowledge store (`byok_stores`): a vector_io provider `byok_<rag_id>` (faiss ones
    with a storage backend of their own), the registered store, and its embedding model."""
    if not stores:
        return
    backends = _backends(run)
    vector_io = _providers(run, "vector_io")
    vector_stores = _resources(run, "vector_stores")
    models = _resources(run, "models")
    provider_ids = {_match_id(e.get("provider_id")) for e in vector_io if isinstance(e, dict)}
    store_ids = {str(s.get("vector_store_id")) for s in vector_stores if isinstance(s, dict)}
    model_ids = {str(m.get("model_id")) for m in models if isinstance(m, dict)}
    for index, store in enumerate(stores):
        store = _section(store)
        rag_id = _store_key(store, index, "rag_id")
        vector_db_id = _store_key(store, index, "vector_db_id")
        backend_kind, provider_type = _store_type(store, index)
        provider_id = f"byok_{rag_id}"
        storage = f"byok_{rag_id}_storage"
        if backend_kind == "faiss":
            db_path = store.get("db_path") or str(state_dir / "byok" / f"{rag_id}.db")
            backends[storage] = {"type": "kv_sqlite", "db_path": db_path}
        if provider_id not in provider_ids:
            provider_ids.add(provider_id)
            vector_io.append({"provider_id": provider_id, "provider_type": provider_type,
                              "config": _vector_io_config(provider_type, storage, store)})
        dimension = store.get("embedding_dimension") or BYOK_EMBEDDING_DIMENSION
        model_id = f"byok_{rag_id}_embedding"
        if vector_db_id not in store_ids:
            store_ids.add(vector_db_id)
            # Stores name their model by its registered id, not by the path it loads from.
            vector_stores.append({"vector_store_id": vector_db_id, "provider_id": provider_id,
                                  "embedding_model": f"{EMBEDDING_PROVIDER}/{model_id}",
                                  "embedding_dimension": dimension})
        model = store.get("embedding_model") or BYOK_EMBEDDING_MODEL
        if model_id not in model_ids:
            model_ids.add(model_id)
            models.append(_embedding_model(model_id, str(model), dimension))


def okp_enabled(rag: Mapping[str, Any]) -> bool:
    """Whether inline or tool retrieval lists "okp": `rag.retrieval.<mode>.sources` as written,
    or `rag.<mode>` in the loaded configuration."""
    retrieval = _section(rag.get("retrieval"))
    for mode in ("inline", "tool"):
        sources = [*_list(_section(retrieval.get(mode)).get("sources")), *_list(rag.get(mode))]
        if OKP_ID in sources:
            return True
    return False


def apply_okp(run: dict[str, Any], rag: Mapping[str, Any]) -> None:
    """When a retrieval mode lists "okp": the Solr vector_io provider, its store and its
    embedding model (each added only when absent), and its search mode."""
    if not okp_enabled(rag):
        return
    okp = _section(rag.get("okp"))
    extra = okp.get("chunk_filter_query")
    chunk_filter = f"{SOLR_CHUNK_FILTER} AND {extra}" if extra else SOLR_CHUNK_FILTER
    base_url = str(okp.get("rhokp_url") or SOLR_DEFAULT_URL)
    vector_io = _providers(run, "vector_io")
    if SOLR_PROVIDER_ID not in {_match_id(e.get("provider_id")) for e in vector_io
                                if isinstance(e, dict)}:
        def env(name: str, default: Any) -> str:
            return f"${{env.{name}:={default}}}"

        vector_io.append({
            "provider_id": SOLR_PROVIDER_ID,
            "provider_type": "remote::solr_vector_io",
            "config": {
                "solr_url": urljoin(base_url, "/solr"),
                "collection_name": env("SOLR_COLLECTION", SOLR_STORE_ID),
                "vector_field": env("SOLR_VECTOR_FIELD", "chunk_vector"),
                "content_field": env("SOLR_CONTENT_FIELD", "chunk"),
                "embedding_model": env("SOLR_EMBEDDING_MODEL",
                                       f"{EMBEDDING_PROVIDER}/{SOLR_EMBEDDING_MODEL}"),
                "embedding_dimension": env("SOLR_EMBEDDING_DIM", SOLR_EMBEDDING_DIMENSION),
                # The field names of OKP's Solr schema.
                "chunk_window_config": {
                    "chunk_parent_id_field": "parent_id",
                    "chunk_content_field": "chunk_field",
                    "chunk_index_field": "chunk_index",
                    "chunk_token_count_field": "num_tokens",
                    "chunk_online_source_url_field": "online_source_url",
                    "chunk_source_path_field": "source_path",
                    "parent_total_chunks_field": "total_chunks",
                    "parent_total_tokens_field": "total_tokens",
                    "chunk_filter_query": chunk_filter,
                    "chunk_family_fields": ["headings"],
                },
                "persistence": {"namespace": SOLR_STORE_ID, "backend": "kv_default"},
            },
        })
    stores = _resources(run, "vector_stores")
    if SOLR_STORE_ID not in {s.get("vector_store_id") for s in stores if isinstance(s, dict)}:
        stores.append({"vector_store_id": SOLR_STORE_ID, "provider_id": SOLR_PROVIDER_ID,
                       "embedding_model": SOLR_EMBEDDING_MODEL_ID,
                       "embedding_dimension": SOLR_EMBEDDING_DIMENSION})
    models = _resources(run, "models")
    if SOLR_EMBEDDING_MODEL not in {m.get("provider_model_id") for m in models
                                    if isinstance(m, dict)}:
        model = _embedding_model(SOLR_EMBEDDING_MODEL_ID, SOLR_EMBEDDING_MODEL,
                                 SOLR_EMBEDDING_DIMENSION)
        model["provider_model_id"] = f"${{env.SOLR_EMBEDDING_MODEL:={SOLR_EMBEDDING_MODEL}}}"
        models.append(model)
    mode = okp.get("search_mode")
    if mode:
        settings = run.get("vector_stores")
        if not isinstance(settings, dict):
            settings = run["vector_stores"] = {}
        params = settings.setdefault("chunk_retrieval_params", {})
        params["default_search_mode"] = SOLR_SEARCH_MODES.get(str(mode), str(mode))


def apply_vector_store(run: dict[str, Any], section: Mapping[str, Any]) -> None:
    """`vector_store.providers`: vector_io providers (replacing one with the same id), their
    embedding models `vsprov_<id>_embedding`, and the default provider and embedding model."""
    providers = [_section(p) for p in _list(section.get("providers"))]
    if not providers:
        return
    backends = _backends(run)
    vector_io = _providers(run, "vector_io")
    models = _resources(run, "models")
    for index, entry in enumerate(providers):
        provider_id = str(entry.get("id") or "").strip()
        kind = str(entry.get("type") or "")
        if not provider_id:
            raise ConfigError("required key id is missing", key=f"vector_store.providers"
                                                                 f"[{index}].id")
        provider_type = VECTOR_IO_TYPES.get(kind)
        if provider_type is None:
            raise ConfigError(f"unsupported type {kind!r}; supported: "
                              f"{', '.join(sorted(VECTOR_IO_TYPES))}",
                              key=f"vector_store.providers[{index}].type")
        settings = _section(entry.get("config"))
        storage = f"vsprov_{provider_id}_storage"
        if kind == "faiss":
            if not settings.get("path"):
                raise ConfigError("required key path is missing",
                                  key=f"vector_store.providers[{index}].config.path")
            backends[storage] = {"type": "kv_sqlite", "db_path": settings["path"]}
        provider = {"provider_id": provider_id, "provider_type": provider_type,
                    "config": _vector_io_config(provider_type, storage, settings)}
        for position, existing in enumerate(vector_io):
            if isinstance(existing, dict) and _match_id(existing.get("provider_id")) \
                    == provider_id:
                vector_io[position] = provider
                break
        else:
            vector_io.append(provider)
        if entry.get("embedding_model") and entry.get("embedding_dimension") is not None:
            model = _embedding_model(f"vsprov_{provider_id}_embedding",
                                     str(entry["embedding_model"]),
                                     entry["embedding_dimension"])
            for position, existing in enumerate(models):
                if isinstance(existing, dict) and existing.get("model_id") == model["model_id"]:
                    models[position] = model
                    break
            else:
                models.append(model)
    default = str(section.get("default_provider") or "").strip()
    chosen = next((p for p in providers if str(p.get("id") or "").strip() == default), None)
    if chosen is not None:
        defaults = run.get("vector_stores")
        if not isinstance(defaults, dict):
            defaults = run["vector_stores"] = {}
        defaults["default_provider_id"] = default
        if chosen.get("embedding_model"):
            defaults["default_embedding_model"] = {
                "provider_id": EMBEDDING_PROVIDER, "model_id": f"vsprov_{default}_embedding"}


def apply_inference_providers(run: dict[str, Any], providers: list[Any]) -> None:
    """`inference.providers`: each entry becomes a Llama Stack inference provider, replacing
    one with the same id (`${env.X:+id}` counts as `id`); the key stays a ${env.X} reference."""
    if not providers:
        return
    entries = _providers(run, "inference")
    for index, item in enumerate(providers):
        item = _section(item)
        kind = str(item.get("type") or "")
        provider_type = PROVIDER_TYPES.get(kind)
        if provider_type is None:
            raise ConfigError(f"unknown provider type {kind!r}; known: "
                              f"{', '.join(PROVIDER_TYPES)}",
                              key=f"inference.providers[{index}].type")
        provider_id = str(item.get("id") or "").strip() or kind.replace("_", "-")
        config: dict[str, Any] = plain(_section(item.get("extra")))
        if item.get("api_key_env"):
            config[API_KEY_FIELDS.get(provider_type, "api_key")] = \
                f"${{env.{item['api_key_env']}}}"
        if item.get("allowed_models"):
            config["allowed_models"] = plain(item["allowed_models"])
        entry: dict[str, Any] = {"provider_id": provider_id, "provider_type": provider_type}
        if config:
            entry["config"] = config
        for position, existing in enumerate(entries):
            if isinstance(existing, dict) and _match_id(existing.get("provider_id")) \
                    == provider_id:
                entries[position] = entry
                break
        else:
            entries.append(entry)


def ensure_mcp_runtime(run: dict[str, Any]) -> None:
    """LCore's MCP servers go into Responses calls: the MCP tool runtime must be there."""
    apis = run.get("apis")
    if not isinstance(apis, list):
        apis = run["apis"] = []
    if "tool_runtime" not in apis:
        apis.append("tool_runtime")
    runtime = _providers(run, "tool_runtime")
    if not any(isinstance(e, dict) and e.get("provider_id") == MCP_PROVIDER["provider_id"]
               for e in runtime):
        runtime.append(copy.deepcopy(MCP_PROVIDER))


def synthesize(config: Mapping[str, Any], *, base_dir: Path | None = None,
               state_dir: Path | None = None) -> dict[str, Any]:
    """The run configuration for `config` (a loaded configuration or a plain mapping).

    `base_dir`: where a relative profile path starts (the configuration file's directory);
    `state_dir`: where the default baseline keeps its state (default: `state_directory`).
    Raises `ConfigError` for an input it cannot use.
    """
    state = state_dir or state_directory(config)
    run, empty = baseline(config, base_dir, state)
    apply_azure_entra_id(run, config.get("azure_entra_id"))
    apply_byok_stores(run, byok_stores(config), state)
    apply_okp(run, _section(config.get("rag")))
    apply_vector_store(run, _section(config.get("vector_store")))
    apply_inference_providers(run, _list(_section(config.get("inference")).get("providers")))
    if not empty:
        # An empty baseline is what `lcore config migrate` writes: the lifted run.yaml comes
        # back unchanged.
        ensure_mcp_runtime(run)
    override = _section(_section(config.get("llama_stack")).get("config")).get("native_override")
    if override:
        run = deep_merge(run, override)
    # One vector_io provider per id, whether the baseline, a stage or the override repeated it.
    dedupe_vector_io(run)
    return run


# --- files ------------------------------------------------------------------------------------


def dump_yaml(data: Any) -> str:
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    # In the order the stages built it (the safe dumper sorts keys otherwise).
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    out = io.StringIO()
    yaml.dump(plain(data), out)
    return out.getvalue()


def write_private(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (a temporary file beside it, then a rename), mode 0600:
    the file may hold secrets (a literal key in native_override or in a migrated run.yaml)."""
    path = path.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return write_atomically(path, text)


def output_path(config: Mapping[str, Any]) -> Path:
    """Where library mode writes the run configuration: run.yaml in the state directory."""
    return state_directory(config) / RUN_FILE


def synthesize_to_file(config: Any, path: Path | None = None) -> Path:
    """Build the run configuration for a loaded configuration and write it; return the path."""
    source = str(getattr(config, "source", "") or "")
    base_dir = Path(source).resolve().parent if source and not source.startswith("<") \
        else None
    run = synthesize(config, base_dir=base_dir)
    return write_private(path or output_path(config), dump_yaml(run))
