"""Loading lightspeed-stack.yaml: errors name file, line and key; substitution; masking."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from marshmallow import Schema, ValidationError, fields, validate

from lcore_core import ConfigSection, hookimpl
from lcore_core.auth import AuthTuple, RbacResolver
from lcore_core.config import Config, ConfigError, load_config
from lcore_core.config import schema as core
from lcore_core.plugins import Plugins, load_plugins

REPO = Path(__file__).resolve().parents[2]
FULL_DEFAULT = REPO / "lcore_core" / "data" / "lightspeed-stack.full.yaml"
EXAMPLES = REPO / "examples"

# Two lines, so a section appended to it starts on line 3.
BASE = "name: test\nllama_stack: {url: 'http://localhost:8321'}\n"


@pytest.fixture
def plugins() -> Plugins:
    return load_plugins(entrypoints=False)


def write(tmp_path: Path, text: str, name: str = "lightspeed-stack.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, plugins: Plugins) -> Config:
    return load_config(write(tmp_path, text), plugins)


def errors(tmp_path: Path, text: str, plugins: Plugins) -> list[str]:
    """The error lines for a bad file, with the file name replaced by `F`."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins)
    return str(info.value).replace(str(path), "F").splitlines()


# --- files that load ---------------------------------------------------------------------


def test_minimal_file_gets_upstream_defaults(tmp_path, plugins):
    config = load(tmp_path, BASE, plugins)
    assert config.source == str(tmp_path / "lightspeed-stack.yaml")
    assert config.service.host == "localhost"
    assert config.service.port == 8080
    assert config.service.workers == 1
    assert config.service.cors is None  # no cross-origin access unless configured
    assert config.llama_stack.timeout == 180
    assert config.llama_stack.use_as_library_client is False
    assert config.llama_stack.max_retries == 5
    assert config.llama_stack.retry_delay == 2
    assert config.authentication.module == "noop"
    assert config.authorization is None
    assert config.conversation_cache.type == "noop"
    assert config.inference.max_infer_iters == 10
    assert config.inference.max_tool_calls == 30
    assert config.database == {"sqlite": None, "postgres": None}


def test_full_default_loads_with_builtins_only(plugins):
    config = load_config(FULL_DEFAULT, plugins)
    assert config.name == "LCore"
    assert config.conversation_cache.type == "memory"
    assert config.conversation_cache.settings == {"max_entries": 1000,
                                                  "max_bytes": 64 * 1024 * 1024}


def test_full_default_states_the_defaults(tmp_path, plugins, monkeypatch):
    """Every value the full file sets is the default: it documents, it does not change."""
    monkeypatch.delenv("LLAMA_STACK_URL", raising=False)
    full = load_config(FULL_DEFAULT, plugins)
    minimal = load(tmp_path, "llama_stack: {url: 'http://localhost:8321'}\n", plugins)
    for key in ("name", "config_format_version", "service", "llama_stack",
                "user_data_collection", "authentication", "authorization", "database",
                "mcp_servers", "inference", "plugins"):
        assert full[key] == minimal[key], key
    assert full.customization == core.CustomizationSchema().load({})


def _keys(schema: type[Schema]) -> set[str]:
    found = set()
    for name, field in schema._declared_fields.items():
        found.add(name)
        inner = getattr(field, "inner", field)
        if isinstance(inner, fields.Nested) and isinstance(inner.nested, type):
            found |= _keys(inner.nested)
    return found


def test_full_default_mentions_every_core_key():
    text = FULL_DEFAULT.read_text()
    top = Schema.from_dict(core.CORE_SECTIONS)
    wanted = _keys(top) | {"authentication", "module", "skip_tls_verification",
                           "skip_for_health_probes", "skip_for_metrics", "k8s_cluster_api",
                           "k8s_ca_cert_path", "api_key_config", "jwk_config",
                           "conversation_cache", "max_entries", "max_bytes", "rules_file",
                           "inherits", "quota_handlers", "a2a_state"}
    missing = sorted(k for k in wanted if f"{k}:" not in text)
    assert missing == []


def test_example_configuration_loads(plugins):
    config = load_config(EXAMPLES / "lightspeed-stack.yaml", plugins)
    assert config.llama_stack.url == "http://localhost:8321"
    assert config.authentication.module == "noop"
    assert config.database.sqlite.db_path == "/tmp/data/lightspeed-stack.db"
    assert config.conversation_cache.type == "memory"
    assert config.user_data_collection.feedback_enabled is True
    assert config.user_data_collection.feedback_storage == "/tmp/data/feedback"
    assert config.mcp_servers[0].name == "filesystem-tools"
    assert config.customization.system_prompt.startswith("You are a helpful assistant")
    assert (config.inference.default_provider, config.inference.default_model) == (
        "openai", "gpt-4o-mini")


def test_example_authorization_rules_file(tmp_path, plugins):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "authorization.yaml").write_text(
        (EXAMPLES / "authorization.yaml").read_text())
    config = load(tmp_path, BASE + "authorization:\n  rules_file: rules/authorization.yaml\n",
                  plugins)
    rules = config.authorization.access_rules
    assert [r.role for r in rules] == ["admin", "*", "support", "operator"]
    resolver = RbacResolver(rules)
    operator = AuthTuple("u", "u", frozenset({"operator"}))
    anyone = AuthTuple("u", "u", frozenset())
    assert resolver.allowed(operator, "get_metrics")
    assert resolver.allowed(operator, "read_other_conversations")  # via support
    assert resolver.allowed(operator, "query")  # via support -> *
    assert resolver.allowed(anyone, "streaming_query")
    assert not resolver.allowed(anyone, "read_other_conversations")
    assert resolver.allowed(AuthTuple("u", "u", frozenset({"admin"})), "get_config")


def test_rules_file_rules_follow_inline_rules(tmp_path, plugins):
    write(tmp_path, "access_rules:\n  - {role: b, actions: [info]}\n", "authorization.yaml")
    config = load(tmp_path, BASE + textwrap.dedent("""\
        authorization:
          access_rules:
            - {role: a, actions: [query]}
          rules_file: authorization.yaml
        """), plugins)
    assert [r.role for r in config.authorization.access_rules] == ["a", "b"]


def test_ogx_is_accepted_for_llama_stack(tmp_path, plugins):
    config = load(tmp_path, "ogx:\n  url: http://ogx:8321\n  timeout: 30\n", plugins)
    assert config.llama_stack.url == "http://ogx:8321"
    assert config.llama_stack.timeout == 30


def test_system_prompt_path_is_read(tmp_path, plugins):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Be brief.")
    config = load(tmp_path, BASE + f"customization:\n  system_prompt: other\n"
                                   f"  system_prompt_path: {prompt}\n", plugins)
    assert config.customization.system_prompt == "Be brief."


def test_agent_card_config_is_free_form(tmp_path, plugins):
    config = load(tmp_path, BASE + textwrap.dedent("""\
        customization:
          agent_card_config:
            name: helper
            skills: [{id: a, tags: [x]}]
            anything: {goes: here}
        """), plugins)
    assert config.customization.agent_card_config.skills[0].tags == ["x"]


def test_auth_subsections_of_other_modules_are_accepted(tmp_path, plugins):
    config = load(tmp_path, BASE + textwrap.dedent("""\
        authentication:
          module: noop-with-token
          jwk_config: {url: https://example.com/certs}
          rh_identity_config: {required_entitlements: [rhel]}
        """), plugins)
    assert config.authentication.module == "noop-with-token"


def test_api_key_token_with_its_section(tmp_path, plugins):
    config = load(tmp_path, BASE + textwrap.dedent("""\
        authentication:
          module: api-key-token
          api_key_config:
            api_key: some-api-key
        """), plugins)
    assert config.authentication.settings.api_key == "some-api-key"


# --- substitution ------------------------------------------------------------------------


def test_env_substitution(tmp_path, plugins, monkeypatch):
    monkeypatch.setenv("LS_URL", "http://stack:9000")
    monkeypatch.setenv("LS_KEY", "12345")
    config = load(tmp_path, "llama_stack:\n  url: ${env.LS_URL}\n  api_key: ${env.LS_KEY}\n",
                  plugins)
    assert config.llama_stack.url == "http://stack:9000"
    # A key of digits stays text: the schema decides the type, not the variable's content.
    assert config.llama_stack.api_key == "12345"


def test_env_substitution_inside_a_string(tmp_path, plugins, monkeypatch):
    monkeypatch.setenv("LS_HOST", "stack")
    config = load(tmp_path, "llama_stack:\n  url: http://${env.LS_HOST}:8321/v1\n", plugins)
    assert config.llama_stack.url == "http://stack:8321/v1"


def test_typed_substitution(tmp_path, plugins, monkeypatch):
    monkeypatch.setenv("LS_PORT", "8081")
    monkeypatch.setenv("LS_AUTH", "true")
    config = load(tmp_path, BASE + "service:\n  port: ${env.LS_PORT}\n"
                                   "  auth_enabled: ${env.LS_AUTH}\n", plugins)
    assert config.service.port == 8081
    assert isinstance(config.service.port, int)
    assert config.service.auth_enabled is True


def test_env_default_used_when_unset(tmp_path, plugins, monkeypatch):
    monkeypatch.delenv("LS_UNSET_PORT", raising=False)
    monkeypatch.delenv("LS_UNSET_HOST", raising=False)
    config = load(tmp_path, BASE + "service:\n  port: ${env.LS_UNSET_PORT:=9090}\n"
                                   "  host: ${env.LS_UNSET_HOST:=}\n", plugins)
    assert config.service.port == 9090
    assert config.service.host == ""


def test_env_set_wins_over_default(tmp_path, plugins, monkeypatch):
    monkeypatch.setenv("LS_SET_PORT", "7000")
    config = load(tmp_path, BASE + "service:\n  port: ${env.LS_SET_PORT:=9090}\n", plugins)
    assert config.service.port == 7000


def test_env_unset_without_default(tmp_path, plugins, monkeypatch):
    monkeypatch.delenv("LS_MISSING", raising=False)
    assert errors(tmp_path, BASE + "database:\n  postgres:\n    db: x\n    user: y\n"
                                   "    password: ${env.LS_MISSING}\n", plugins) == [
        "F:7: database.postgres.password: environment variable LS_MISSING is not set and has "
        "no default (write ${env.LS_MISSING:=value} to give one)"]


def test_secret_from_file(tmp_path, plugins):
    secret = tmp_path / "pg-password"
    secret.write_text("s3cret\n")
    config = load(tmp_path, BASE + f"database:\n  postgres:\n    db: x\n    user: y\n"
                                   f"    password: ${{file:{secret}}}\n", plugins)
    assert config.database.postgres.password == "s3cret"


def test_secret_file_missing(tmp_path, plugins):
    missing = tmp_path / "nope"
    assert errors(tmp_path, f"llama_stack:\n  url: http://x:1\n"
                            f"  api_key: ${{file:{missing}}}\n", plugins) == [
        f"F:3: llama_stack.api_key: cannot read secret file {str(missing)!r}: "
        f"No such file or directory"]


def test_duplicate_key(tmp_path, plugins):
    [line] = errors(tmp_path, BASE + "service:\n  port: 1\n  port: 2\n", plugins)
    assert line.startswith('F:5: invalid YAML: found duplicate key "port"')


# --- errors ------------------------------------------------------------------------------


def test_yaml_syntax_error(tmp_path, plugins):
    lines = errors(tmp_path, BASE + "service:\n  port: [8080\n  host: x\n", plugins)
    assert len(lines) == 1
    assert lines[0].startswith("F:5: invalid YAML:")


def test_top_level_must_be_a_mapping(tmp_path, plugins):
    assert errors(tmp_path, "- a\n- b\n", plugins) == [
        "F:1: <root>: the top level must be a mapping of sections"]


def test_missing_file(tmp_path, plugins):
    with pytest.raises(ConfigError, match="configuration file not found") as info:
        load_config(tmp_path / "absent.yaml", plugins)
    assert info.value.file == str(tmp_path / "absent.yaml")


def test_unknown_nested_key_with_line(tmp_path, plugins):
    assert errors(tmp_path, BASE + "service:\n  host: x\n  prot: 1\n", plugins) == [
        "F:5: service.prot: unknown key"]


def test_unknown_key_in_list_item(tmp_path, plugins):
    assert errors(tmp_path, BASE + textwrap.dedent("""\
        mcp_servers:
          - name: a
            url: http://a:1
          - name: b
            url: http://b:1
            tmeout: 3
        """), plugins) == ["F:8: mcp_servers[1].tmeout: unknown key"]


def test_unknown_section_suggests(tmp_path, plugins):
    [line] = errors(tmp_path, BASE + "sevice:\n  port: 1\n", plugins)
    assert line.startswith("F:3: sevice: unknown section (did you mean service?); known "
                           "sections: ")
    assert "llama_stack" in line


def test_wrong_type(tmp_path, plugins):
    assert errors(tmp_path, BASE + "service:\n  workers: many\n  auth_enabled: maybe\n",
                  plugins) == ["F:4: service.workers: Not a valid integer.",
                               "F:5: service.auth_enabled: Not a valid boolean."]


def test_section_of_wrong_type(tmp_path, plugins):
    assert errors(tmp_path, BASE + "service: 8080\n", plugins) == [
        "F:3: service: Invalid input type."]


def test_invalid_port(tmp_path, plugins):
    assert errors(tmp_path, BASE + "service:\n  port: 70000\n", plugins) == [
        "F:4: service.port: Must be greater than or equal to 1 and less than or equal to "
        "65535."]


def test_invalid_root_path(tmp_path, plugins):
    assert errors(tmp_path, BASE + "service:\n  root_path: api/\n", plugins) == [
        "F:4: service.root_path: root_path must start with '/'"]


def test_missing_required_top_level_key(tmp_path, plugins):
    assert errors(tmp_path, "name: x\nservice:\n  port: 8080\n", plugins) == [
        "F:1: llama_stack: required key is missing"]


def test_missing_required_nested_key(tmp_path, plugins):
    assert errors(tmp_path, BASE + "mcp_servers:\n  - name: a\n    provider_id: p\n",
                  plugins) == ["F:4: mcp_servers[0].url: required key is missing"]


def test_server_or_library_mode_needed(tmp_path, plugins):
    assert errors(tmp_path, "llama_stack:\n  api_key: x\n", plugins) == [
        "F:1: llama_stack.url: give url (server mode) or use_as_library_client: true "
        "(library mode)"]


def test_library_config_must_exist(tmp_path, plugins):
    assert errors(tmp_path, "llama_stack:\n  use_as_library_client: true\n"
                            "  library_client_config_path: /nonexistent/run.yaml\n",
                  plugins) == ["F:3: llama_stack.library_client_config_path: file "
                               "'/nonexistent/run.yaml' does not exist"]


def test_errors_are_all_reported_in_line_order(tmp_path, plugins):
    lines = errors(tmp_path, BASE + textwrap.dedent("""\
        service:
          port: 0
        inference:
          default_model: m
        bogus: 1
        """), plugins)
    # a missing key is reported at its section's line
    assert [line.split(":")[1] for line in lines] == ["4", "5", "7"]
    assert lines[1] == "F:5: inference.default_provider: default_model and default_provider " \
                       "go together"


def test_ogx_and_llama_stack_together(tmp_path, plugins):
    assert errors(tmp_path, BASE + "ogx:\n  url: http://x:1\n", plugins) == [
        "F:3: ogx: give either llama_stack or ogx, not both"]


def test_errors_under_ogx_name_ogx(tmp_path, plugins):
    assert errors(tmp_path, "ogx:\n  url: http://x:1\n  timeot: 3\n", plugins) == [
        "F:3: ogx.timeot: unknown key"]


def test_unknown_auth_module(tmp_path, plugins):
    assert errors(tmp_path, BASE + "authentication:\n  module: ldap\n", plugins) == [
        "F:4: authentication.module: unknown authentication module 'ldap'; installed: "
        "api-key-token, noop, noop-with-token, rh-identity (is the plugin that provides it "
        "installed?)"]


def test_auth_module_of_an_uninstalled_plugin(tmp_path, plugins):
    assert errors(tmp_path, BASE + "authentication:\n  module: jwk-token\n", plugins) == [
        "F:4: authentication.module: authentication module 'jwk-token' is provided by the "
        "plugin lcore-auth-jwk, which is not installed (pip install lcore-auth-jwk); "
        "installed: api-key-token, noop, noop-with-token, rh-identity"]


def test_upstream_auth_module_of_a_missing_plugin(tmp_path, plugins):
    [line] = errors(tmp_path, BASE + "authentication:\n  module: trusted-proxy\n", plugins)
    assert line.startswith("F:4: authentication.module: authentication module 'trusted-proxy' "
                           "is provided by the plugin lcore-auth-k8s, which is not installed")


def test_api_key_token_needs_its_section(tmp_path, plugins):
    assert errors(tmp_path, BASE + "authentication:\n  module: api-key-token\n", plugins) == [
        "F:4: authentication.api_key_config: section api_key_config is required when "
        "authentication.module is 'api-key-token'"]


def test_api_key_section_is_validated(tmp_path, plugins):
    assert errors(tmp_path, BASE + "authentication:\n  module: api-key-token\n"
                                   "  api_key_config:\n    api_kee: x\n", plugins)[0] == (
        "F:6: authentication.api_key_config.api_kee: unknown key")


def test_unknown_cache_type(tmp_path, plugins):
    assert errors(tmp_path, BASE + "conversation_cache:\n  type: redis\n", plugins) == [
        "F:4: conversation_cache.type: unknown conversation cache type 'redis'; installed: "
        "memory, noop (is the plugin that provides it installed?)"]


def test_cache_type_of_an_uninstalled_plugin(tmp_path, plugins):
    [line] = errors(tmp_path, BASE + "conversation_cache:\n  type: postgres\n"
                                     "  postgres: {db: x, user: y}\n", plugins)
    assert line == ("F:4: conversation_cache.type: conversation cache type 'postgres' is "
                    "provided by the plugin lcore-cache-postgres, which is not installed "
                    "(pip install lcore-cache-postgres); installed: memory, noop")


def test_cache_backend_without_type(tmp_path, plugins):
    assert errors(tmp_path, BASE + "conversation_cache:\n  memory:\n    max_entries: 5\n",
                  plugins) == ["F:4: conversation_cache.type: type is required when a backend "
                               "section is given (found memory)"]


def test_cache_other_backend_section(tmp_path, plugins):
    assert errors(tmp_path, BASE + "conversation_cache:\n  type: memory\n"
                                   "  sqlite: {db_path: /tmp/x}\n", plugins) == [
        "F:5: conversation_cache.sqlite: only the memory section may be given when type is "
        "'memory'"]


def test_cache_settings_validated(tmp_path, plugins):
    assert errors(tmp_path, BASE + "conversation_cache:\n  type: memory\n  memory:\n"
                                   "    max_entries: 0\n", plugins) == [
        "F:6: conversation_cache.memory.max_entries: Must be greater than or equal to 1."]


def test_plugin_section_without_its_plugin(tmp_path, plugins):
    assert errors(tmp_path, BASE + "quota_handlers:\n  limiters: []\n", plugins) == [
        "F:3: quota_handlers: section needs the plugin lcore-quota, which is not installed "
        "(pip install lcore-quota)"]


def test_unsupported_upstream_section(tmp_path, plugins):
    assert errors(tmp_path, BASE + "okp:\n  offline: true\n", plugins) == [
        "F:3: okp: not supported by LCore: the 0.6 layout's OKP section (upstream moved it "
        "to rag.okp, which LCore reads); remove the section"]


def test_byok_rag_entry_needs_its_vector_store(tmp_path, plugins):
    assert errors(tmp_path, BASE + "byok_rag:\n  - rag_id: docs\n", plugins) == [
        "F:4: byok_rag[0].vector_db_id: required key is missing"]


def test_unsupported_upstream_nested_keys(tmp_path, plugins):
    assert errors(tmp_path, BASE + textwrap.dedent("""\
        service:
          max_concurrent_file_uploads: 5
        mcp_servers:
          - name: a
            url: http://a:1
          - name: b
            url: http://b:1
            require_approval: always
        """), plugins) == [
        "F:4: service.max_concurrent_file_uploads: not supported by LCore: file uploads "
        "(/v1/files); remove the key",
        "F:10: mcp_servers[1].require_approval: LCore does not hold tool calls for human "
        "approval: with 'always' no tool of this server would run; use 'never'"]


def test_unknown_action(tmp_path, plugins):
    [line] = errors(tmp_path, BASE + textwrap.dedent("""\
        authorization:
          access_rules:
            - role: "*"
              actions:
                - query
                - streming_query
        """), plugins)
    assert line.startswith("F:8: authorization.access_rules[0].actions[1]: unknown action "
                           "'streming_query' (did you mean streaming_query?); valid actions: ")


def test_upstream_action_lcore_lacks_loads_with_a_warning(tmp_path, plugins, monkeypatch):
    # An action of an upstream endpoint LCore does not serve (a made-up one: the list shrinks).
    monkeypatch.setitem(core.UPSTREAM_ACTIONS, "manage_gadgets", "gadgets")
    config = load(tmp_path, BASE + "authorization:\n  access_rules:\n"
                                   "    - {role: x, actions: [manage_gadgets, query]}\n", plugins)
    path = str(tmp_path / "lightspeed-stack.yaml")
    assert [w.replace(path, "F") for w in config.warnings] == [
        "F:5: authorization.access_rules[0].actions[0]: action 'manage_gadgets' grants nothing "
        "in LCore: it is for gadgets, which LCore does not serve"]
    # The rule keeps what it grants.
    assert RbacResolver(config.authorization.access_rules).allowed(
        AuthTuple("u", "u", frozenset({"x"}), None), "query")


def test_missing_rules_file(tmp_path, plugins):
    assert errors(tmp_path, BASE + "authorization:\n  rules_file: nope.yaml\n", plugins) == [
        f"F:4: authorization.rules_file: rules file {str(tmp_path / 'nope.yaml')!r} does not "
        f"exist"]


def test_error_inside_rules_file_names_that_file(tmp_path, plugins):
    rules = write(tmp_path, "access_rules:\n  - role: a\n    actions: [query, fly]\n",
                  "authorization.yaml")
    [line] = errors(tmp_path, BASE + "authorization:\n  rules_file: authorization.yaml\n",
                    plugins)
    assert line.startswith(f"{rules}:3: access_rules[0].actions[1]: unknown action 'fly'")


def test_duplicate_mcp_server_names(tmp_path, plugins):
    assert errors(tmp_path, BASE + "mcp_servers:\n  - {name: a, url: 'http://a:1'}\n"
                                   "  - {name: a, url: 'http://b:1'}\n", plugins) == [
        "F:3: mcp_servers: MCP server names must be unique; repeated: a"]


def test_config_errors_carry_their_parts(tmp_path, plugins):
    path = write(tmp_path, BASE + "service:\n  port: 70000\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, plugins)
    assert (info.value.file, info.value.line, info.value.key) == (str(path), 4, "service.port")


# --- masking -----------------------------------------------------------------------------


def test_masked_hides_secrets(tmp_path, plugins, monkeypatch):
    monkeypatch.setenv("LS_PG_PASSWORD", "pg-pass-123")
    config = load(tmp_path, BASE.replace("}", ", api_key: ls-key-456}") + textwrap.dedent("""\
        database:
          postgres: {db: x, user: y, password: "${env.LS_PG_PASSWORD}"}
        authentication:
          module: api-key-token
          api_key_config:
            api_key: key-789
            api_keys: [key-000]
        mcp_servers:
          - name: a
            url: http://a:1
            authorization_headers:
              Authorization: /var/secrets/token
              X-Tenant: client
        """), plugins)
    assert config.database.postgres.password == "pg-pass-123"
    masked = config.masked()
    text = repr(masked)
    for secret in ("pg-pass-123", "ls-key-456", "key-789", "key-000", "/var/secrets/token"):
        assert secret not in text
    assert masked["database"]["postgres"]["password"] == "*****"
    assert masked["llama_stack"]["api_key"] == "*****"
    assert masked["authentication"]["settings"]["api_key"] == "*****"
    assert masked["mcp_servers"][0]["authorization_headers"] == {
        "Authorization": "*****", "X-Tenant": "*****"}
    assert masked["database"]["postgres"]["user"] == "y"
    # the configuration itself is untouched
    assert config.llama_stack.api_key == "ls-key-456"


# --- plugin-provided sections -------------------------------------------------------------


class MySchema(Schema):
    enabled = fields.Boolean(load_default=False)
    size = fields.Integer(load_default=3, validate=validate.Range(min=1))


class MyPlugin:
    @hookimpl
    def lcore_config_sections(self):
        return [ConfigSection("my_section", MySchema)]


@pytest.fixture
def with_section() -> Plugins:
    return load_plugins(entrypoints=False, extra=[MyPlugin()])


def test_plugin_section_loads(tmp_path, with_section):
    config = load(tmp_path, BASE + "my_section:\n  enabled: true\n  size: 7\n", with_section)
    assert config.my_section == {"enabled": True, "size": 7}


def test_plugin_section_absent_is_none(tmp_path, with_section):
    assert load(tmp_path, BASE, with_section).my_section is None


def test_plugin_section_errors_have_lines(tmp_path, with_section):
    assert errors(tmp_path, BASE + "my_section:\n  enabled: true\n  size: 0\n  colour: red\n",
                  with_section) == [
        "F:5: my_section.size: Must be greater than or equal to 1.",
        "F:6: my_section.colour: unknown key"]


def test_plugin_section_unknown_without_plugin(tmp_path, plugins):
    [line] = errors(tmp_path, BASE + "my_section:\n  size: 1\n", plugins)
    assert line.startswith("F:3: my_section: unknown section")


def test_kubernetes_mcp_header_needs_k8s_auth(tmp_path, plugins):
    config = load(tmp_path, BASE + textwrap.dedent("""\
        mcp_servers:
          - name: a
            url: http://a:1
            authorization_headers:
              Authorization: kubernetes
          - name: b
            url: http://b:1
        """), plugins)
    # As upstream: the server is left out (with a warning naming the key); the others stay.
    assert [s.name for s in config.mcp_servers] == ["b"]
    path = str(tmp_path / "lightspeed-stack.yaml")
    assert [w.replace(path, "F") for w in config.warnings] == [
        "F:7: mcp_servers[0].authorization_headers.Authorization: 'kubernetes' forwards the "
        "caller's bearer token, which authentication.module 'noop' does not have (k8s or "
        "noop-with-token do): MCP server 'a' is left out, as upstream does"]
    # As upstream, noop-with-token keeps the caller's token too.
    load_config(write(tmp_path, BASE + textwrap.dedent("""\
        authentication:
          module: noop-with-token
        mcp_servers:
          - name: a
            url: http://a:1
            authorization_headers:
              Authorization: kubernetes
        """)), plugins)


def test_readme_provider_example_loads(tmp_path):
    """The README's provider block is a valid configuration with the plugins installed."""
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Providers.*?```yaml\n(.*?)```", text, re.S).group(1)
    block = block.replace("/var/lib/lcore", str(tmp_path))
    config = load(tmp_path, BASE + block, load_plugins())
    assert config.authentication.module == "noop"
    assert [lim["name"] for lim in config["quota_handlers"]["limiters"]] == [
        "user_daily", "cluster_monthly"]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8321", "https://llama.example.com/v1", "http://localhost", "HTTP://HOST",
    "http://llama-stack:8321", "http://user:pw@host.example.org/p?q=1#f", "http://[::1]:80/",
    "http://a.b", "http://café.example", "http://host.example.:8080/",
])
def test_http_urls_accepted(url):
    assert core.HTTP_URL(url) == url


@pytest.mark.parametrize("url", [
    "http://-a.com", "http://" + "a" * 64 + ".com", "http://host:port", "http://host:70000",
    "http://x y", "http://x.com/ y", "ftp://x.com", "x.com", "http://", "", "http://x\x1c.com",
    "http://[::zz]/", "http://a..b", "http://under_score.com", None,
])
def test_http_urls_refused(url):
    with pytest.raises(ValidationError, match="Not a valid URL"):
        core.HTTP_URL(url)


# --- user_data_collection.transcripts_storage --------------------------------------------


def _transcripts(storage: Path) -> str:
    return (BASE + "user_data_collection:\n  transcripts_enabled: true\n"
            f"  transcripts_storage: {storage}\n")


def test_transcripts_storage_may_be_created_later(tmp_path, plugins):
    storage = tmp_path / "not" / "yet" / "there"
    config = load(tmp_path, _transcripts(storage), plugins)
    assert config.user_data_collection.transcripts_storage == str(storage)
    assert not storage.exists()  # made at the first transcript, not at start-up


def test_transcripts_storage_must_be_a_directory(tmp_path, plugins):
    storage = tmp_path / "a-file"
    storage.write_text("not a directory")
    assert errors(tmp_path, _transcripts(storage), plugins) == [
        f"F:5: user_data_collection.transcripts_storage: '{storage}' is not a directory"]
    below = storage / "transcripts"
    assert errors(tmp_path, _transcripts(below), plugins) == [
        f"F:5: user_data_collection.transcripts_storage: '{below}' cannot be created"]


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process may not write to: a chmod-ed one, or for root (who may write
    anywhere else) /proc/sys, a read-only file system."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/proc/sys")
    if not folder.is_dir() or os.access(folder, os.W_OK):
        pytest.skip("no read-only directory for root here")
    yield folder


def test_transcripts_storage_must_be_writable(tmp_path, plugins, read_only_dir):
    assert errors(tmp_path, _transcripts(read_only_dir), plugins) == [
        f"F:5: user_data_collection.transcripts_storage: '{read_only_dir}' is not writable"]
    below = read_only_dir / "lcore-transcripts"
    assert errors(tmp_path, _transcripts(below), plugins) == [
        f"F:5: user_data_collection.transcripts_storage: '{below}' cannot be created: "
        f"'{read_only_dir}' is not writable"]
