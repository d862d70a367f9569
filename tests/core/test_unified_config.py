"""Unified mode's sections in lightspeed-stack.yaml: what loads, and each rule's file:line error."""

from __future__ import annotations

import textwrap

import pytest

from lcore_core.config import load_config
from lcore_core.plugins import Plugins, load_plugins

from .test_config import errors, load, write


@pytest.fixture
def plugins() -> Plugins:
    return load_plugins(entrypoints=False)

SERVER = "name: test\nllama_stack: {url: 'http://localhost:8321'}\n"
LIBRARY = "name: test\nllama_stack:\n  use_as_library_client: true\n"


# --- llama_stack.config ------------------------------------------------------------------------


def test_config_block_alone_is_library_mode_with_default_baseline(tmp_path, plugins):
    config = load(tmp_path, "name: t\nllama_stack:\n  config: {}\n", plugins)
    assert config.llama_stack.use_as_library_client is True
    assert config.llama_stack.config == {"baseline": "default", "profile": None,
                                         "native_override": {}}


def test_profile_is_found_beside_the_configuration_file(tmp_path, plugins, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "base-run.yaml").write_text("version: 2\n")
    monkeypatch.chdir(tmp_path)  # not where the profile is
    config = load_config(write(tmp_path / "conf", LIBRARY + "  config:\n"
                                                            "    profile: base-run.yaml\n"),
                         plugins)
    assert config.llama_stack.config.profile == str(tmp_path / "conf" / "base-run.yaml")


def test_missing_profile(tmp_path, plugins):
    assert errors(tmp_path, LIBRARY + "  config:\n    profile: nowhere.yaml\n", plugins) == [
        f"F:5: llama_stack.config.profile: profile '{tmp_path / 'nowhere.yaml'}' does not "
        f"exist"]


def test_profile_that_is_no_run_configuration(tmp_path, plugins):
    (tmp_path / "list.yaml").write_text("- a\n")
    (tmp_path / "broken.yaml").write_text("version: 2\napis: [x\n")
    assert errors(tmp_path, LIBRARY + "  config:\n    profile: list.yaml\n", plugins) == [
        f"F:5: llama_stack.config.profile: '{tmp_path / 'list.yaml'}' must hold a mapping "
        f"(a Llama Stack run configuration)"]
    [line] = errors(tmp_path, LIBRARY + "  config:\n    profile: broken.yaml\n", plugins)
    assert line.startswith(f"F:5: llama_stack.config.profile: {tmp_path / 'broken.yaml'}:3: "
                           f"invalid YAML")


def test_bad_baseline_and_unknown_key(tmp_path, plugins):
    assert errors(tmp_path, LIBRARY + "  config:\n    baseline: starter\n    extras: 1\n",
                  plugins) == [
        "F:5: llama_stack.config.baseline: Must be one of: default, empty.",
        "F:6: llama_stack.config.extras: unknown key"]


def test_native_override_keeps_llama_stack_references(tmp_path, plugins, monkeypatch):
    """${env.X} inside native_override is left for Llama Stack: the key never lands in the
    run.yaml LCore writes, and Llama Stack's own ${env.X:+y} form survives."""
    monkeypatch.setenv("UNIFIED_TEST_KEY", "sk-secret")
    config = load(tmp_path, LIBRARY + (
        "  config:\n"
        "    native_override:\n"
        "      providers:\n"
        "        inference:\n"
        "          - provider_id: ${env.UNIFIED_TEST_KEY:+openai}\n"
        "            config: {api_key: \"${env.UNIFIED_TEST_KEY}\"}\n"
        "  api_key: ${env.UNIFIED_TEST_KEY}\n"), plugins)
    [provider] = config.llama_stack.config.native_override["providers"]["inference"]
    assert provider == {"provider_id": "${env.UNIFIED_TEST_KEY:+openai}",
                        "config": {"api_key": "${env.UNIFIED_TEST_KEY}"}}
    assert config.llama_stack.api_key == "sk-secret"  # elsewhere LCore substitutes as before


def test_ogx_alias_errors_name_ogx(tmp_path, plugins):
    assert errors(tmp_path, "name: t\nogx:\n  use_as_library_client: true\n  config:\n"
                            "    baseline: nope\n", plugins) == [
        "F:5: ogx.config.baseline: Must be one of: default, empty."]


# --- inference.providers -----------------------------------------------------------------------


def test_inference_providers_load(tmp_path, plugins):
    config = load(tmp_path, LIBRARY + textwrap.dedent("""\
        inference:
          providers:
            - type: openai
              api_key_env: OPENAI_API_KEY
              allowed_models: [gpt-4o-mini]
              extra: {base_url: "${env.OPENAI_BASE_URL:=http://127.0.0.1:9/v1}"}
            - type: vllm_rhaiis
              id: "  rhaiis  "
        """), plugins)
    first, second = config.inference.providers
    assert first.type == "openai" and first.id is None
    assert first.extra == {"base_url": "${env.OPENAI_BASE_URL:=http://127.0.0.1:9/v1}"}
    assert first.allowed_models == ["gpt-4o-mini"]
    assert second.id == "rhaiis"  # blanks around it dropped
    assert config.llama_stack.use_as_library_client is True


def test_inference_provider_rules(tmp_path, plugins):
    assert errors(tmp_path, LIBRARY + textwrap.dedent("""\
        inference:
          providers:
            - type: bedrock
            - type: openai
              id: "   "
            - type: ollama
              id: Ollama.1
            - type: vllm
              api_key_env: "not a name"
            - id: x
        """), plugins) == [
        "F:6: inference.providers[0].type: Must be one of: openai, ollama, vllm, "
        "sentence_transformers, azure, vertexai, watsonx, vllm_rhaiis, vllm_rhel_ai.",
        "F:8: inference.providers[1].id: must not be blank",
        "F:10: inference.providers[2].id: may hold only lowercase letters, digits, '_' and '-'",
        "F:12: inference.providers[3].api_key_env: not an environment variable name",
        "F:13: inference.providers[4].type: required key is missing"]


# --- vector_store ------------------------------------------------------------------------------


VECTOR_STORE = """\
vector_store:
  default_provider: docs
  providers:
    - id: docs
      type: faiss
      embedding_model: sentence-transformers/all-mpnet-base-v2
      embedding_dimension: 768
      config: {path: /tmp/docs.db}
    - id: pg
      type: pgvector
      embedding_model: m
      embedding_dimension: 8
      config: {port: 5433}
"""


def test_vector_store_loads_with_pgvector_defaults(tmp_path, plugins):
    text = VECTOR_STORE.replace("default_provider: docs", "default_provider: ' docs '")
    config = load(tmp_path, SERVER + text, plugins)
    faiss, pg = config.vector_store.providers
    assert faiss.config == {"path": "/tmp/docs.db"}
    assert pg.config == {"host": "${env.POSTGRES_HOST}", "port": 5433,
                         "db": "${env.POSTGRES_DATABASE}", "user": "${env.POSTGRES_USER}",
                         "password": "${env.POSTGRES_PASSWORD}"}
    assert config.vector_store.default_provider == "docs"


def test_vector_store_absent_is_empty(tmp_path, plugins):
    config = load(tmp_path, SERVER, plugins)
    assert config.vector_store == {"default_provider": None, "providers": []}


@pytest.mark.parametrize(("change", "expected"), [
    (("  default_provider: docs\n", "  default_provider: other\n"),
     "F:4: vector_store.default_provider: 'other' is not one of the providers' ids: docs, pg"),
    (("  default_provider: docs\n", ""),
     "F:3: vector_store.default_provider: required when providers is not empty"),
    (("  default_provider: docs\n", "  default_provider: '  '\n"),
     "F:4: vector_store.default_provider: must not be blank"),
    (("- id: pg", "- id: docs"),
     "F:5: vector_store.providers: provider ids must be unique; repeated: docs"),
    (("- id: pg", "- id: byok_pg"),
     "F:11: vector_store.providers[1].id: must not start with 'byok_': that prefix is kept "
     "for the stores of rag.byok.stores"),
    (("config: {path: /tmp/docs.db}", "config: {}"),
     "F:10: vector_store.providers[0].config.path: required key is missing"),
    (("config: {port: 5433}", "config: {port: [1]}"),
     "F:15: vector_store.providers[1].config.port: must be a number or a string"),
    (("type: pgvector", "type: chroma"),
     "F:12: vector_store.providers[1].type: Must be one of: faiss, pgvector."),
    (("config: {port: 5433}", "config: {sslmode: x}"),
     "F:15: vector_store.providers[1].config.sslmode: unknown key"),
])
def test_vector_store_rules(tmp_path, plugins, change, expected):
    old, new = change
    assert old in VECTOR_STORE
    assert errors(tmp_path, SERVER + VECTOR_STORE.replace(old, new), plugins) == [expected]


def test_default_provider_without_providers(tmp_path, plugins):
    assert errors(tmp_path, SERVER + "vector_store:\n  default_provider: docs\n", plugins) == [
        "F:4: vector_store.default_provider: must not be set while providers is empty"]


# --- azure_entra_id ----------------------------------------------------------------------------


def test_azure_entra_id(tmp_path, plugins):
    config = load(tmp_path, SERVER + "azure_entra_id: {tenant_id: t, client_id: c, "
                                     "client_secret: s}\n", plugins)
    assert config.azure_entra_id.scope == "https://cognitiveservices.azure.com/.default"
    assert config.masked()["azure_entra_id"]["client_secret"] == "*****"
    assert errors(tmp_path, SERVER + "azure_entra_id:\n  tenant_id: t\n", plugins) == [
        "F:3: azure_entra_id.client_id: required key is missing",
        "F:3: azure_entra_id.client_secret: required key is missing"]


def test_azure_entra_id_without_authlib_says_what_to_install(tmp_path, plugins, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "authlib.integrations.httpx_client", None)
    lines = errors(tmp_path, SERVER + "azure_entra_id: {tenant_id: t, client_id: c, "
                                      "client_secret: s}\n", plugins)
    assert len(lines) == 1 and "azure_entra_id.tenant_id" in lines[0], lines
    assert "pip install 'lcore-core[azure]'" in lines[0]


# --- unified or legacy: the rules across sections ----------------------------------------------


def test_legacy_path_and_unified_inputs_exclude_each_other(tmp_path, plugins):
    run = write(tmp_path, "version: 2\n", "run.yaml")
    for unified in ("  config: {}\n",
                    "inference:\n  providers: [{type: openai}]\n"):
        lines = errors(tmp_path, LIBRARY + f"  library_client_config_path: {run}\n" + unified,
                       plugins)
        assert lines == [
            "F:4: llama_stack.library_client_config_path: a run.yaml of your own "
            "(library_client_config_path) and the inputs LCore builds one from "
            "(llama_stack.config, a non-empty inference.providers or a non-empty "
            "vector_store.providers) exclude each other: keep one; `lcore config migrate` "
            "turns a legacy pair into one unified file"], unified


def test_library_mode_needs_a_run_configuration(tmp_path, plugins):
    assert errors(tmp_path, LIBRARY, plugins) == [
        "F:3: llama_stack.use_as_library_client: library mode needs a run configuration: "
        "library_client_config_path or llama_stack.config, a non-empty inference.providers "
        "or a non-empty vector_store.providers"]
    # an empty providers list is no input
    assert len(errors(tmp_path, LIBRARY + "inference: {providers: []}\n", plugins)) == 1


def test_unified_mode_cannot_feed_ogx_library_mode(tmp_path, plugins):
    assert errors(tmp_path, LIBRARY + "  backend: ogx\n  config: {baseline: empty}\n",
                  plugins) == [
        "F:4: llama_stack.backend: library mode on OGX reads an OGX run configuration, and "
        "LCore writes Llama Stack 0.7 ones: give OGX's in library_client_config_path instead "
        "of llama_stack.config, a non-empty inference.providers or a non-empty "
        "vector_store.providers"]
    # server mode on OGX, or library mode on Llama Stack, from a unified file: fine
    for backend in ("llama_stack", "auto"):  # auto: decided at start-up (refuse_unified_on_ogx)
        config = load(tmp_path, LIBRARY + f"  backend: {backend}\n  config: {{baseline: empty}}\n",
                      plugins)
        assert config.llama_stack.backend == backend


@pytest.mark.parametrize(("declared", "body", "shape"), [
    ("unified", SERVER, "legacy"),
    ("legacy", LIBRARY + "  config: {baseline: empty}\n", "unified"),
])
def test_format_version_must_match_the_shape(tmp_path, plugins, declared, body, shape):
    [line] = errors(tmp_path, body + f"config_format_version: {declared}\n", plugins)
    assert line.startswith(f"F:{body.count(chr(10)) + 1}: config_format_version: is "
                           f"'{declared}' but the file is {shape}-shaped")


def test_format_version_that_matches(tmp_path, plugins):
    assert load(tmp_path, LIBRARY + "  config: {}\nconfig_format_version: unified\n",
                plugins).config_format_version == "unified"
    assert load(tmp_path, SERVER + "config_format_version: legacy\n",
                plugins).config_format_version == "legacy"
    # server mode with unified inputs: LCore reads none of it; the sidecar builds its run.yaml
    assert load(tmp_path, SERVER + "config_format_version: unified\n" + VECTOR_STORE,
                plugins).llama_stack.use_as_library_client is False
    assert errors(tmp_path, SERVER + "config_format_version: v2\n", plugins) == [
        "F:3: config_format_version: Must be one of: legacy, unified."]
