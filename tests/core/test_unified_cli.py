"""`lcore config synthesize` and `lcore config migrate` (in process: `cli.main`)."""

from __future__ import annotations

import stat
import textwrap
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lcore_core import cli
from lcore_core import llama_config as lc
from lcore_core.config import load_config
from lcore_core.plugins import load_plugins

LEGACY_RUN = """\
# a legacy run.yaml
version: 2
apis: [inference, vector_io]
providers:
  inference:
    - provider_id: ${env.OPENAI_API_KEY:+openai}
      provider_type: remote::openai
      config: {api_key: "${env.OPENAI_API_KEY:=}"}
  vector_io:
    - {provider_id: faiss, provider_type: inline::faiss}
server: {port: 8321}
"""


def safe_load(text: str) -> object:
    return YAML(typ="safe").load(text)


def unified_file(tmp_path: Path) -> Path:
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: t
        llama_stack:
          url: http://127.0.0.1:8321
          state_dir: {tmp_path / "state"}
        inference:
          providers:
            - type: openai
              api_key_env: OPENAI_API_KEY
              extra: {{base_url: "http://127.0.0.1:9/v1"}}
        """))
    return path


def test_synthesize_to_a_file(tmp_path, capsys):
    config = unified_file(tmp_path)
    out = tmp_path / "out" / "run.yaml"
    assert cli.main(["config", "synthesize", "-c", str(config), "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    loaded = load_config(config, load_plugins(entrypoints=False))
    assert safe_load(out.read_text()) == lc.synthesize(loaded)
    assert f"llama stack run {out}" in capsys.readouterr().err


def test_synthesize_defaults_to_the_state_directory_and_stdout(tmp_path, capsys):
    config = unified_file(tmp_path)
    assert cli.main(["config", "synthesize", "-c", str(config)]) == 0
    written = tmp_path / "state" / "run.yaml"
    run = safe_load(written.read_text())
    assert run["providers"]["inference"][0]["config"]["api_key"] == "${env.OPENAI_API_KEY}"
    capsys.readouterr()
    assert cli.main(["config", "synthesize", "-c", str(config), "-o", "-"]) == 0
    assert safe_load(capsys.readouterr().out) == run


def test_synthesize_refuses_a_legacy_file(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(LEGACY_RUN)
    config = tmp_path / "lightspeed-stack.yaml"
    config.write_text("name: t\nllama_stack:\n  use_as_library_client: true\n"
                      f"  library_client_config_path: {tmp_path / 'run.yaml'}\n")
    assert cli.main(["config", "synthesize", "-c", str(config)]) == cli.EXIT_CONFIG
    assert (f"{config}: llama_stack.library_client_config_path: the configuration names its "
            f"own run.yaml (legacy mode)") in capsys.readouterr().err


def test_synthesize_reports_a_broken_profile(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("version: 2\nproviders: [\n")
    config = tmp_path / "lightspeed-stack.yaml"
    config.write_text("name: t\nllama_stack:\n  use_as_library_client: true\n"
                      "  config: {profile: base.yaml}\n")
    assert cli.main(["config", "synthesize", "-c", str(config), "-o", "-"]) == cli.EXIT_CONFIG
    assert f"{tmp_path / 'base.yaml'}:3: invalid YAML" in capsys.readouterr().err


# --- migrate ------------------------------------------------------------------------------------


def legacy_pair(tmp_path: Path) -> Path:
    (tmp_path / "run.yaml").write_text(LEGACY_RUN)
    config = tmp_path / "lightspeed-stack.yaml"
    config.write_text(textwrap.dedent("""\
        name: t  # my service
        llama_stack:
          use_as_library_client: true
          # the run.yaml beside this file
          library_client_config_path: run.yaml
          timeout: 60
        authentication: {module: noop}
        """))
    return config


def test_migrate_round_trips_the_run_yaml(tmp_path, monkeypatch):
    config = legacy_pair(tmp_path)
    monkeypatch.chdir(tmp_path.parent)  # run.yaml is found beside the file, not here
    out = tmp_path / "unified.yaml"
    assert cli.main(["config", "migrate", "-c", str(config), "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert "# my service" in text and "library_client_config_path" not in text
    loaded = load_config(out, load_plugins(entrypoints=False))
    assert loaded.llama_stack.timeout == 60
    assert loaded.llama_stack.use_as_library_client is True
    assert loaded.config_format_version is None
    assert lc.synthesize(loaded) == safe_load(LEGACY_RUN)


def test_migrate_with_an_explicit_run_yaml(tmp_path):
    config = tmp_path / "lightspeed-stack.yaml"
    config.write_text("name: t\nogx: {url: 'http://127.0.0.1:8321'}\n")
    (tmp_path / "other-run.yaml").write_text(LEGACY_RUN)
    out = tmp_path / "unified.yaml"
    assert cli.main(["config", "migrate", "-c", str(config), "--run-yaml",
                     str(tmp_path / "other-run.yaml"), "-o", str(out)]) == 0
    migrated = safe_load(out.read_text())
    assert migrated["ogx"]["config"]["baseline"] == "empty"
    assert migrated["ogx"]["config"]["native_override"] == safe_load(LEGACY_RUN)


@pytest.mark.parametrize(("text", "message"), [
    ("name: t\nllama_stack:\n  url: http://x:1\n",
     "F:2: llama_stack.library_client_config_path: give --run-yaml: the configuration names "
     "no run.yaml file"),
    ("name: t\nllama_stack:\n  use_as_library_client: true\n  config: {}\n",
     "F:4: llama_stack.config: already unified: llama_stack.config is set"),
    ("name: t\n", "F: llama_stack: no llama_stack section to migrate"),
])
def test_migrate_errors(tmp_path, capsys, text, message):
    config = tmp_path / "lightspeed-stack.yaml"
    config.write_text(text)
    out = tmp_path / "unified.yaml"
    assert cli.main(["config", "migrate", "-c", str(config), "-o", str(out)]) == cli.EXIT_CONFIG
    assert message in capsys.readouterr().err.replace(str(config), "F")
    assert not out.exists()
