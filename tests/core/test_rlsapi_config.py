"""The rlsapi_v1, splunk and deployment_environment sections: defaults and every rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lcore_core.config import Config, load_config
from lcore_core.plugins import Plugins, load_plugins

from .test_config import BASE
from .test_config import errors as config_errors
from .test_config import write as config_file


@pytest.fixture
def plugins() -> Plugins:
    return load_plugins(entrypoints=False)


def write(tmp_path: Path, text: str) -> Path:
    return config_file(tmp_path, BASE + textwrap.dedent(text))


def load(tmp_path: Path, text: str, plugins: Plugins) -> Config:
    return load_config(write(tmp_path, text), plugins)


def errors(tmp_path: Path, text: str, plugins: Plugins) -> list[str]:
    return config_errors(tmp_path, BASE + textwrap.dedent(text), plugins)


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "hec-token"
    path.write_text("secret-hec-token\n", encoding="utf-8")
    return path


def test_defaults_when_absent(tmp_path, plugins):
    config = load(tmp_path, "", plugins)
    assert config.rlsapi_v1 == {"allow_verbose_infer": False, "quota_subject": None}
    assert config.splunk is None
    assert config.deployment_environment == "development"


def test_full_sections_load(tmp_path, plugins, token):
    config = load(tmp_path, f"""\
        authentication: {{module: rh-identity}}
        rlsapi_v1: {{allow_verbose_infer: true, quota_subject: org_id}}
        deployment_environment: production
        splunk:
          enabled: true
          url: https://splunk.example.com:8088/services/collector
          token_path: {token}
          index: rhel_lightspeed
          source: cla
          timeout: 3
          verify_ssl: false
        """, plugins)
    assert config.rlsapi_v1.quota_subject == "org_id"
    assert config.rlsapi_v1.allow_verbose_infer is True
    assert config.deployment_environment == "production"
    assert config.splunk == {"enabled": True,
                             "url": "https://splunk.example.com:8088/services/collector",
                             "token_path": str(token), "index": "rhel_lightspeed",
                             "source": "cla", "timeout": 3, "verify_ssl": False,
                             "queue_size": 1000}


def test_splunk_defaults(tmp_path, plugins):
    config = load(tmp_path, "splunk: {}\n", plugins)
    assert config.splunk == {"enabled": False, "url": None, "token_path": None, "index": None,
                             "source": "lightspeed-stack", "timeout": 5, "verify_ssl": True,
                             "queue_size": 1000}


def test_enabled_splunk_needs_url_token_path_and_index(tmp_path, plugins):
    assert errors(tmp_path, "splunk:\n  enabled: true\n", plugins) == [
        "F:3: splunk.url: Splunk is enabled but required fields are missing: url, "
        "token_path, index"]


def test_enabled_splunk_names_only_what_is_missing(tmp_path, plugins, token):
    assert errors(tmp_path, f"""\
        splunk:
          enabled: true
          url: http://127.0.0.1:8088/services/collector
          token_path: {token}
        """, plugins) == [
        "F:3: splunk.index: Splunk is enabled but required fields are missing: index"]


def test_disabled_splunk_may_be_incomplete(tmp_path, plugins):
    assert load(tmp_path, "splunk: {enabled: false, index: x}\n", plugins).splunk.index == "x"


@pytest.mark.parametrize(("entry", "line", "message"), [
    ("url: not-a-url", 5, "splunk.url: Not a valid URL."),
    ("token_path: /no/such/token", 5, "splunk.token_path: file '/no/such/token' does not exist"),
    ("timeout: 0", 5, "splunk.timeout: Must be greater than or equal to 1."),
    ("verify_ssl: maybe", 5, "splunk.verify_ssl: Not a valid boolean."),
    ("queue_size: 0", 5, "splunk.queue_size: Must be greater than or equal to 1 and less than "
                         "or equal to 1000000."),
    ("hec_token: abc", 5, "splunk.hec_token: unknown key"),
])
def test_splunk_keys_checked(tmp_path, plugins, entry, line, message):
    assert errors(tmp_path, f"splunk:\n  enabled: false\n  {entry}\n", plugins) == [
        f"F:{line}: {message}"]


def test_unknown_quota_subject(tmp_path, plugins):
    assert errors(tmp_path, "rlsapi_v1:\n  quota_subject: account\n", plugins) == [
        "F:4: rlsapi_v1.quota_subject: Must be one of: user_id, org_id, system_id."]


def test_unknown_rlsapi_key(tmp_path, plugins):
    assert errors(tmp_path, "rlsapi_v1:\n  verbose: true\n", plugins) == [
        "F:4: rlsapi_v1.verbose: unknown key"]


@pytest.mark.parametrize("subject", ["org_id", "system_id"])
def test_rh_identity_subject_needs_rh_identity_auth(tmp_path, plugins, subject):
    assert errors(tmp_path, f"""\
        authentication:
          module: noop
        rlsapi_v1:
          quota_subject: {subject}
        """, plugins) == [
        f"F:6: rlsapi_v1.quota_subject: quota_subject '{subject}' is read from the "
        f"X-RH-Identity header and needs authentication.module: rh-identity, not 'noop'; use "
        f"quota_subject: user_id or switch authentication to rh-identity"]


def test_rh_identity_subject_with_default_auth_is_refused(tmp_path, plugins):
    [line] = errors(tmp_path, "rlsapi_v1: {quota_subject: system_id}\n", plugins)
    assert line.startswith("F:3: rlsapi_v1.quota_subject: quota_subject 'system_id' ")


@pytest.mark.parametrize("module", ["noop", "rh-identity"])
def test_user_id_subject_works_with_any_auth(tmp_path, plugins, module):
    config = load(tmp_path, f"authentication: {{module: {module}}}\n"
                            f"rlsapi_v1: {{quota_subject: user_id}}\n", plugins)
    assert config.rlsapi_v1.quota_subject == "user_id"


def test_deployment_environment_must_be_text(tmp_path, plugins):
    assert errors(tmp_path, "deployment_environment: [prod]\n", plugins) == [
        "F:3: deployment_environment: Not a valid string."]


def test_rlsapi_action_is_known(tmp_path, plugins):
    config = load(tmp_path, "authorization:\n  access_rules:\n"
                            "    - {role: cla, actions: [rlsapi_v1_infer]}\n", plugins)
    assert "rlsapi_v1_infer" in config.valid_actions

