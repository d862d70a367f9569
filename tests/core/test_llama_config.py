"""Unified mode's synthesis of Llama Stack's run configuration, stage by stage, on plain dicts."""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from lcore_core import llama_config as lc
from lcore_core.config.unified import INFERENCE_TYPES
from lcore_core.errors import ConfigError


def ids(run: dict[str, Any], api: str) -> list[str]:
    return [p["provider_id"] for p in run["providers"][api]]


def read_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


# --- baseline -------------------------------------------------------------------------------


def test_default_baseline_keeps_its_state_in_the_state_directory(state):
    run = lc.synthesize({}, state_dir=state)
    text = lc.dump_yaml(run)
    assert "@STATE_DIR@" not in text and "~" not in text and ".llama" not in text
    assert run["storage"]["backends"]["kv_default"]["db_path"] == str(state / "kvstore.db")
    assert run["providers"]["files"][0]["config"]["storage_dir"] == str(state / "files")
    assert ids(run, "vector_io") == ["faiss"]
    # OpenAI only while OPENAI_API_KEY is set when Llama Stack starts
    assert ids(run, "inference") == ["${env.OPENAI_API_KEY:+openai}"]


def test_state_directory_order(monkeypatch, tmp_path):
    monkeypatch.setenv("LCORE_DATA_DIR", str(tmp_path / "env"))
    assert lc.state_directory({}) == tmp_path / "env"
    assert lc.state_directory({"llama_stack": {"state_dir": str(tmp_path / "key")}}) \
        == tmp_path / "key"
    monkeypatch.delenv("LCORE_DATA_DIR")
    assert lc.state_directory({}) == Path("~/.local/share/lcore").expanduser()


def test_empty_baseline_with_no_inputs_is_empty(state):
    """An empty baseline gets nothing of its own, not even the MCP runtime (`lcore config
    migrate` relies on this to give back the original run.yaml)."""
    assert lc.synthesize({"llama_stack": {"config": {"baseline": "empty"}}},
                         state_dir=state) == {}


def test_profile_is_the_baseline(tmp_path, state):
    (tmp_path / "profile.yaml").write_text("version: 2\napis: [inference]\nextra_key: kept\n")
    config = {"llama_stack": {"config": {"profile": "profile.yaml", "baseline": "empty"}}}
    run = lc.synthesize(config, base_dir=tmp_path, state_dir=state)
    # the profile wins over `baseline`, and gets the MCP runtime
    assert run["extra_key"] == "kept"
    assert run["apis"] == ["inference", "tool_runtime"]
    assert ids(run, "tool_runtime") == ["model-context-protocol"]


@pytest.mark.parametrize(("text", "message", "line"), [
    ("- a list\n", "a run configuration must be a mapping", 1),
    ("version: 2\napis: [inference\n", "invalid YAML", 3),
])
def test_bad_profile(tmp_path, state, text, message, line):
    profile = tmp_path / "profile.yaml"
    profile.write_text(text)
    with pytest.raises(ConfigError) as info:
        lc.synthesize({"llama_stack": {"config": {"profile": str(profile)}}}, state_dir=state)
    assert (info.value.file, info.value.line) == (str(profile), line)
    assert info.value.message.startswith(message)


def test_baseline_vector_io_duplicates_collapse(tmp_path, state):
    profile = tmp_path / "p.yaml"
    profile.write_text("providers:\n  vector_io:\n"
                       "    - {provider_id: faiss, provider_type: inline::faiss, config: {n: 1}}\n"
                       "    - {provider_id: ' faiss ', provider_type: inline::faiss}\n"
                       "    - {provider_type: inline::faiss}\n")
    run = lc.synthesize({"llama_stack": {"config": {"profile": str(profile)}}}, state_dir=state)
    assert run["providers"]["vector_io"] == [
        {"provider_id": "faiss", "provider_type": "inline::faiss", "config": {"n": 1}},
        {"provider_type": "inline::faiss"}]


# --- azure_entra_id -----------------------------------------------------------------------------


def _empty_with(**sections: Any) -> dict[str, Any]:
    native = sections.pop("native", None)
    block: dict[str, Any] = {"baseline": "empty"}
    if native:
        block["native_override"] = native
    return {"llama_stack": {"config": block}, **sections}


def test_azure_providers_skip_model_validation(state, tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("providers:\n  inference:\n"
                       "    - {provider_id: azure, provider_type: remote::azure}\n"
                       "    - {provider_id: openai, provider_type: remote::openai}\n")
    config: dict[str, Any] = {"llama_stack": {"config": {"profile": str(profile)}}}
    assert "config" not in lc.synthesize(config, state_dir=state)["providers"]["inference"][0]
    config["azure_entra_id"] = {"tenant_id": "t", "client_id": "c", "client_secret": "s"}
    azure, openai = lc.synthesize(config, state_dir=state)["providers"]["inference"]
    assert azure["config"] == {"model_validation": False}
    assert "config" not in openai


def test_azure_stage_comes_before_inference_providers(state):
    """Upstream's order: the Entra ID stage sees the baseline's providers, not the ones
    inference.providers adds afterwards."""
    run = lc.synthesize(_empty_with(azure_entra_id={"tenant_id": "t"},
                                    inference={"providers": [{"type": "azure"}]}),
                        state_dir=state)
    assert run["providers"]["inference"] == [{"provider_id": "azure",
                                              "provider_type": "remote::azure"}]


# --- rag.byok.stores ----------------------------------------------------------------------------


def test_byok_stores(state):
    stores = [
        {"rag_id": "docs", "backend": "faiss", "vector_db_id": "vs_docs", "db_path": "/d.db",
         "embedding_model": "sentence-transformers/all-MiniLM-L6-v2", "embedding_dimension": 384},
        {"rag_id": "pg", "backend": "pgvector", "vector_db_id": "vs_pg", "host": "db.example",
         "port": 5433, "password": "  "},
    ]
    run = lc.synthesize(_empty_with(rag={"byok": {"stores": stores}}), state_dir=state)
    assert run["storage"]["backends"] == {
        "byok_docs_storage": {"type": "kv_sqlite", "db_path": "/d.db"}}
    faiss, pg = run["providers"]["vector_io"]
    assert faiss == {"provider_id": "byok_docs", "provider_type": "inline::faiss",
                     "config": {"persistence": {"namespace": "vector_io::faiss",
                                                "backend": "byok_docs_storage"}}}
    assert pg == {"provider_id": "byok_pg", "provider_type": "remote::pgvector",
                  "config": {"persistence": {"namespace": "vector_io::pgvector",
                                             "backend": "kv_default"},
                             "host": "db.example", "port": 5433,
                             "db": "${env.POSTGRES_DATABASE}", "user": "${env.POSTGRES_USER}",
                             "password": "${env.POSTGRES_PASSWORD}"}}
    assert run["registered_resources"]["vector_stores"] == [
        {"vector_store_id": "vs_docs", "provider_id": "byok_docs",
         "embedding_model": "sentence-transformers/byok_docs_embedding",
         "embedding_dimension": 384},
        {"vector_store_id": "vs_pg", "provider_id": "byok_pg",
         "embedding_model": "sentence-transformers/byok_pg_embedding",
         "embedding_dimension": 768}]
    assert run["registered_resources"]["models"] == [
        {"model_id": "byok_docs_embedding", "model_type": "embedding",
         "provider_id": "sentence-transformers", "provider_model_id": "all-MiniLM-L6-v2",
         "metadata": {"embedding_dimension": 384}},
        {"model_id": "byok_pg_embedding", "model_type": "embedding",
         "provider_id": "sentence-transformers",
         "provider_model_id": "all-mpnet-base-v2", "metadata": {"embedding_dimension": 768}}]


def test_byok_store_without_db_path_lives_in_the_state_directory(state):
    run = lc.synthesize(_empty_with(rag={"byok": {"stores": [
        {"rag_id": "x", "vector_db_id": "vs_x"}]}}), state_dir=state)
    assert run["storage"]["backends"]["byok_x_storage"]["db_path"] == str(state / "byok" /
                                                                           "x.db")


def test_byok_leaves_what_the_baseline_registered(tmp_path, state):
    profile = tmp_path / "p.yaml"
    profile.write_text("providers:\n  vector_io: [{provider_id: byok_x, provider_type: mine}]\n"
                       "registered_resources:\n"
                       "  vector_stores: [{vector_store_id: vs_x, provider_id: mine}]\n"
                       "  models: [{model_id: byok_x_embedding, provider_id: mine}]\n")
    config = {"llama_stack": {"config": {"profile": str(profile), "baseline": "default"}},
              "rag": {"byok": {"stores": [{"rag_id": "x", "vector_db_id": "vs_x"}]}}}
    run = lc.synthesize(config, state_dir=state)
    assert run["providers"]["vector_io"] == [{"provider_id": "byok_x", "provider_type": "mine"}]
    assert run["registered_resources"]["vector_stores"] == [
        {"vector_store_id": "vs_x", "provider_id": "mine"}]
    assert run["registered_resources"]["models"] == [
        {"model_id": "byok_x_embedding", "provider_id": "mine"}]


@pytest.mark.parametrize(("store", "key", "message"), [
    ({"vector_db_id": "v"}, "rag.byok.stores[0].rag_id", "required key rag_id is missing"),
    ({"rag_id": "r"}, "rag.byok.stores[0].vector_db_id", "required key vector_db_id is missing"),
    ({"rag_id": "r", "vector_db_id": "v", "backend": "chroma"}, "rag.byok.stores[0].backend",
     "unsupported backend 'chroma'; supported: faiss, pgvector"),
])
def test_byok_errors(state, store, key, message):
    with pytest.raises(ConfigError) as info:
        lc.synthesize(_empty_with(rag={"byok": {"stores": [store]}}), state_dir=state)
    assert (info.value.key, info.value.message) == (key, message)


# --- OKP (Solr) ---------------------------------------------------------------------------------


def test_okp_only_when_a_retrieval_mode_lists_it(state):
    rag: dict[str, Any] = {"okp": {"rhokp_url": "http://okp.example:8080/base/"},
                           "retrieval": {"inline": {"sources": ["docs"]}}}
    assert lc.synthesize(_empty_with(rag=rag), state_dir=state) == {}
    rag["retrieval"]["tool"] = {"sources": ["okp"]}
    rag["okp"].update(chunk_filter_query="product:ansible", search_mode="semantic")
    run = lc.synthesize(_empty_with(rag=rag), state_dir=state)
    [solr] = run["providers"]["vector_io"]
    assert solr["provider_id"] == "okp_solr"
    assert solr["provider_type"] == "remote::solr_vector_io"
    assert solr["config"]["solr_url"] == "http://okp.example:8080/solr"
    assert solr["config"]["chunk_window_config"]["chunk_filter_query"] == \
        "is_chunk:true AND product:ansible"
    assert solr["config"]["collection_name"] == "${env.SOLR_COLLECTION:=portal-rag}"
    assert run["registered_resources"]["vector_stores"] == [
        {"vector_store_id": "portal-rag", "provider_id": "okp_solr",
         "embedding_model": "sentence-transformers/solr_embedding", "embedding_dimension": 384}]
    [model] = run["registered_resources"]["models"]
    assert model["provider_model_id"] == \
        "${env.SOLR_EMBEDDING_MODEL:=ibm-granite/granite-embedding-30m-english}"
    assert run["vector_stores"] == {"chunk_retrieval_params": {"default_search_mode": "vector"}}


def test_okp_defaults(state):
    run = lc.synthesize(_empty_with(rag={"retrieval": {"inline": {"sources": ["okp"]}}}),
                        state_dir=state)
    assert run["providers"]["vector_io"][0]["config"]["solr_url"] == "http://localhost:8081/solr"
    assert run["providers"]["vector_io"][0]["config"]["chunk_window_config"][
        "chunk_filter_query"] == "is_chunk:true"
    assert "vector_stores" not in run


# --- vector_store -------------------------------------------------------------------------------


def test_vector_store_providers(state):
    vector_store = {"default_provider": "docs", "providers": [
        {"id": "faiss", "type": "faiss", "embedding_model": "sentence-transformers/m",
         "embedding_dimension": 8, "config": {"path": "/v.db"}},
        {"id": "docs", "type": "pgvector", "embedding_model": "m2", "embedding_dimension": 16,
         "config": {"host": "pg"}},
    ]}
    run = lc.synthesize({"vector_store": vector_store}, state_dir=state)
    # the baseline's faiss provider is replaced in place, the pgvector one appended
    assert ids(run, "vector_io") == ["faiss", "docs"]
    assert run["providers"]["vector_io"][0]["config"] == {
        "persistence": {"namespace": "vector_io::faiss", "backend": "vsprov_faiss_storage"}}
    assert run["storage"]["backends"]["vsprov_faiss_storage"] == {"type": "kv_sqlite",
                                                                  "db_path": "/v.db"}
    assert run["providers"]["vector_io"][1]["config"]["host"] == "pg"
    assert run["providers"]["vector_io"][1]["config"]["user"] == "${env.POSTGRES_USER}"
    models = {m["model_id"]: m for m in run["registered_resources"]["models"]}
    assert models["vsprov_faiss_embedding"]["provider_model_id"] == "m"
    assert models["vsprov_docs_embedding"]["metadata"] == {"embedding_dimension": 16}
    assert run["vector_stores"]["default_provider_id"] == "docs"
    assert run["vector_stores"]["default_embedding_model"] == {
        "provider_id": "sentence-transformers", "model_id": "vsprov_docs_embedding"}
    # what the baseline had there stays
    assert run["vector_stores"]["annotation_prompt_params"] == {"enable_annotations": False}


def test_vector_store_model_replaced_not_repeated(tmp_path, state):
    profile = tmp_path / "p.yaml"
    profile.write_text("registered_resources:\n  models:\n"
                       "    - {model_id: vsprov_v_embedding, provider_model_id: old}\n")
    run = lc.synthesize({"llama_stack": {"config": {"profile": str(profile)}},
                         "vector_store": {"default_provider": "v", "providers": [
                             {"id": "v", "type": "faiss", "embedding_model": "new",
                              "embedding_dimension": 4, "config": {"path": "/v"}}]}},
                        state_dir=state)
    [model] = run["registered_resources"]["models"]
    assert model["provider_model_id"] == "new"


# --- inference.providers ------------------------------------------------------------------------


def test_every_provider_type_has_a_llama_stack_type():
    assert set(lc.PROVIDER_TYPES) == set(INFERENCE_TYPES)


@pytest.mark.parametrize(("kind", "provider_id", "provider_type", "key_field"), [
    ("openai", "openai", "remote::openai", "api_key"),
    ("ollama", "ollama", "remote::ollama", "api_key"),
    ("vllm", "vllm", "remote::vllm", "api_token"),
    ("sentence_transformers", "sentence-transformers", "inline::sentence-transformers",
     "api_key"),
    ("azure", "azure", "remote::azure", "api_key"),
    ("vertexai", "vertexai", "remote::vertexai", "api_key"),
    ("watsonx", "watsonx", "remote::watsonx", "api_key"),
    ("vllm_rhaiis", "vllm-rhaiis", "remote::vllm", "api_token"),
    ("vllm_rhel_ai", "vllm-rhel-ai", "remote::vllm", "api_token"),
])
def test_provider_type_map(state, kind, provider_id, provider_type, key_field):
    run = lc.synthesize(_empty_with(inference={"providers": [
        {"type": kind, "api_key_env": "THE_KEY"}]}), state_dir=state)
    assert run["providers"]["inference"] == [{
        "provider_id": provider_id, "provider_type": provider_type,
        "config": {key_field: "${env.THE_KEY}"}}]


def test_inference_provider_replaces_the_baseline_one(state):
    run = lc.synthesize({"inference": {"providers": [
        {"type": "openai", "extra": {"base_url": "http://127.0.0.1:9/v1", "api_key": "x"},
         "allowed_models": ["m1"]},
        {"type": "vllm", "id": "local", "extra": {"base_url": "http://a/v1"}},
        {"type": "ollama", "id": "local", "extra": {"base_url": "http://b/v1"}},
    ]}}, state_dir=state)
    # ${env.OPENAI_API_KEY:+openai} counts as openai; the later "local" replaces the earlier
    assert run["providers"]["inference"] == [
        {"provider_id": "openai", "provider_type": "remote::openai",
         "config": {"base_url": "http://127.0.0.1:9/v1", "api_key": "x",
                    "allowed_models": ["m1"]}},
        {"provider_id": "local", "provider_type": "remote::ollama",
         "config": {"base_url": "http://b/v1"}}]


def test_api_key_env_wins_over_a_key_in_extra(state):
    run = lc.synthesize(_empty_with(inference={"providers": [
        {"type": "openai", "api_key_env": "K", "extra": {"api_key": "literal"}}]}),
        state_dir=state)
    assert run["providers"]["inference"][0]["config"] == {"api_key": "${env.K}"}


def test_unknown_provider_type_in_a_plain_mapping(state):
    with pytest.raises(ConfigError) as info:
        lc.synthesize({"inference": {"providers": [{"type": "bedrock"}]}}, state_dir=state)
    assert info.value.key == "inference.providers[0].type"


# --- MCP tool runtime ---------------------------------------------------------------------------


def test_mcp_runtime_added_once(tmp_path, state):
    profile = tmp_path / "p.yaml"
    profile.write_text("apis: [inference, tool_runtime]\nproviders:\n  tool_runtime:\n"
                       "    - {provider_id: model-context-protocol, provider_type: mine}\n")
    run = lc.synthesize({"llama_stack": {"config": {"profile": str(profile)}}},
                        state_dir=state)
    assert run["apis"] == ["inference", "tool_runtime"]
    assert run["providers"]["tool_runtime"] == [{"provider_id": "model-context-protocol",
                                                 "provider_type": "mine"}]


# --- native_override ----------------------------------------------------------------------------


def test_deep_merge_semantics():
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": "x", "g": [{"h": 1}]}
    overlay = {"a": {"c": [3], "d": {"k": 2}, "new": None}, "f": {"now": "a map"}, "g": []}
    before = copy.deepcopy((base, overlay))
    assert lc.deep_merge(base, overlay) == {
        "a": {"b": 1, "c": [3], "d": {"e": 1, "k": 2}, "new": None},
        "f": {"now": "a map"}, "g": []}
    assert (base, overlay) == before  # neither changed


def test_native_override_comes_last(state):
    config = {
        "inference": {"providers": [{"type": "openai", "extra": {"base_url": "http://a/v1"}}]},
        "llama_stack": {"config": {"native_override": {
            "providers": {"inference": [{"provider_id": "mine", "provider_type": "remote::vllm"}],
                          "vector_io": [{"provider_id": "f", "provider_type": "inline::faiss"},
                                        {"provider_id": "f", "provider_type": "dup"}]},
            "server": {"host": "127.0.0.1"},
            "vector_stores": {"default_provider_id": "f"},
        }}},
    }
    run = lc.synthesize(config, state_dir=state)
    # the list replaced the providers inference.providers wrote; maps merged; dupes collapsed
    assert ids(run, "inference") == ["mine"]
    assert ids(run, "vector_io") == ["f"]
    assert run["server"] == {"host": "127.0.0.1"}
    assert run["vector_stores"] == {"default_provider_id": "f",
                                    "annotation_prompt_params": {"enable_annotations": False}}
    assert "files" in run["providers"]  # untouched by the override


def test_synthesis_does_not_change_its_input(state):
    config = {"inference": {"providers": [{"type": "openai", "extra": {"x": {"y": 1}}}]},
              "vector_store": {"default_provider": "v", "providers": [
                  {"id": "v", "type": "faiss", "embedding_model": "m", "embedding_dimension": 2,
                   "config": {"path": "/p"}}]},
              "llama_stack": {"config": {"native_override": {"a": {"b": [1]}}}}}
    before = copy.deepcopy(config)
    run = lc.synthesize(config, state_dir=state)
    run["providers"]["inference"][-1]["config"]["x"]["y"] = 2
    run["a"]["b"].append(2)
    assert config == before


# --- writing the file ---------------------------------------------------------------------------


def test_written_private_and_atomically(tmp_path):
    target = tmp_path / "deep" / "run.yaml"
    old_umask = os.umask(0o022)
    try:
        lc.write_private(target, "a: 1\n")
        target.chmod(0o644)  # a file someone loosened is made private again by the next write
        lc.write_private(target, "a: 2\n")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "a: 2\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["run.yaml"]  # no leftovers


def test_dump_keeps_the_order_and_the_references(state):
    run = lc.synthesize({"inference": {"providers": [{"type": "vllm", "api_key_env": "T"}]}},
                        state_dir=state)
    text = lc.dump_yaml(run)
    assert text.startswith("version: 2\ndistro_name: lcore-unified\napis:\n")
    assert "api_token: ${env.T}" in text
    assert YAML(typ="safe").load(text) == run


# --- the loaded configuration (rag normalised by the loader) ------------------------------------


def test_loaded_configuration_with_upstreams_rag_layout(tmp_path, state):
    from lcore_core.config import load_config
    from lcore_core.plugins import load_plugins

    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(f"""\
name: t
llama_stack:
  use_as_library_client: true
  config: {{baseline: empty}}
rag:
  byok:
    stores:
      - rag_id: notes
        vector_db_id: vs_notes
        db_path: {tmp_path / "notes.db"}
        embedding_dimension: 384
  okp:
    rhokp_url: http://okp.example:8080
  retrieval:
    inline: {{sources: [notes]}}
    tool: {{sources: [okp]}}
""")
    config = load_config(path, load_plugins(entrypoints=False))
    run = lc.synthesize(config, state_dir=state)
    assert ids(run, "vector_io") == ["byok_notes", "okp_solr"]
    assert run["storage"]["backends"]["byok_notes_storage"]["db_path"] == str(tmp_path /
                                                                              "notes.db")
    assert run["providers"]["vector_io"][1]["config"]["solr_url"] == \
        "http://okp.example:8080/solr"
    assert [s["vector_store_id"] for s in run["registered_resources"]["vector_stores"]] == [
        "vs_notes", "portal-rag"]


def test_the_older_byok_rag_layout(state):
    config = _empty_with(byok_rag=[
        {"rag_id": "a", "vector_db_id": "vs_a", "rag_type": "remote::pgvector"},
        {"rag_id": "b", "vector_db_id": "vs_b", "rag_type": "inline::faiss", "db_path": "/b"}],
        rag={"inline": ["okp"], "byok": {"stores": [
            {"rag_id": "a", "vector_db_id": "vs_first", "backend": "faiss", "db_path": "/a"}]}})
    run = lc.synthesize(config, state_dir=state)
    # rag.byok.stores' "a" comes first and wins over byok_rag's; "okp" in rag.inline counts
    assert [(p["provider_id"], p["provider_type"]) for p in run["providers"]["vector_io"]] == [
        ("byok_a", "inline::faiss"), ("byok_b", "inline::faiss"),
        ("okp_solr", "remote::solr_vector_io")]
    pg = lc.synthesize(_empty_with(byok_rag=[{"rag_id": "p", "vector_db_id": "v",
                                              "rag_type": "remote::pgvector"}]), state_dir=state)
    assert pg["providers"]["vector_io"][0]["provider_type"] == "remote::pgvector"
    assert "storage" not in pg or not pg["storage"]["backends"]
    with pytest.raises(ConfigError) as info:
        lc.synthesize(_empty_with(byok_rag=[{"rag_id": "c", "vector_db_id": "v",
                                             "rag_type": "inline::chroma"}]), state_dir=state)
    assert info.value.key == "byok_rag[0].rag_type"
