"""Every example configuration passes `lcore config check` (with the repository's plugins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lcore_core.cli import main
from lcore_core.config import DEFAULT_CONFIG, load_config
from lcore_core.plugins import load_plugins

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECTED = {
    # file: (authentication module, conversation cache, library mode)
    "embedded.yaml": ("noop", "memory", True),
    "server-mode.yaml": ("api-key-token", "noop", False),
    "production.yaml": ("jwk-token", "postgres", False),
    "lightspeed-stack.yaml": ("noop", "memory", False),
    "unified.yaml": ("noop", "memory", True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_passes_config_check(name, capsys):
    path = EXAMPLES / name
    assert main(["config", "check", "-c", str(path)]) == 0, capsys.readouterr().err
    auth, cache, _ = EXPECTED[name]
    assert capsys.readouterr().out.strip() == (
        f"{path}: OK (authentication: {auth}, conversation cache: {cache})")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_mode(name, monkeypatch):
    for var in ("LLAMA_STACK_URL", "LCORE_LLAMA_STACK_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    config = load_config(EXAMPLES / name, load_plugins())
    assert config.llama_stack.use_as_library_client is EXPECTED[name][2]


def test_embedded_example_finds_the_packaged_run_yaml_from_anywhere(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LCORE_LLAMA_STACK_CONFIG", raising=False)
    for path in (EXAMPLES / "embedded.yaml", DEFAULT_CONFIG):
        config = load_config(path, load_plugins(entrypoints=False) if path == DEFAULT_CONFIG
                             else load_plugins())
        run_yaml = Path(config.llama_stack.library_client_config_path)
        assert run_yaml == DEFAULT_CONFIG.parent / "embedded-run.yaml"
        assert config.local_model.unless_env == ["OPENAI_API_KEY", "OLLAMA_URL", "VLLM_URL"]


def test_production_example_has_metrics_for_monitoring_and_postgres_everywhere(monkeypatch):
    monkeypatch.delenv("POSTGRES_HOST", raising=False)
    config = load_config(EXAMPLES / "production.yaml", load_plugins())
    rules = {r.role: r.actions for r in config.authorization.access_rules}
    assert rules["monitoring"] == ["get_metrics"]
    assert config.database.postgres.host == "postgres.lcore.svc"
    assert config.conversation_cache.settings.namespace == "lcore_cache"
    assert config.quota_handlers.postgres.namespace == "lcore_quota"
