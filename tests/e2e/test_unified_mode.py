"""Unified mode end to end: LCore builds Llama Stack's run.yaml and a real Llama Stack runs it.

Library mode: the unified app hands the run.yaml it wrote to the library client. Its profile is
a copy of the session's library run.yaml whose OpenAI provider points nowhere, so an answer
proves inference.providers replaced it; the storage paths stay the session's (Llama Stack keeps
its storage backends in process-wide registries, which a second client re-registers).
Server mode: `lcore config synthesize` (the console script) writes the run.yaml from LCore's
default baseline, `llama stack run` serves it, and LCore answers through it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llama_stack import INFERENCE_PROVIDER_ID, LlamaStackServer, free_port
from lcore_core.testing.llm import DEFAULT_LLM_MODEL

from .support import started

pytestmark = pytest.mark.e2e

LCORE = Path(sys.executable).parent / "lcore"
# The provider key reaches Llama Stack as ${env.<this>}, never written into run.yaml.
KEY_ENV = "LCORE_TEST_UNIFIED_KEY"
KEY = "scripted-unified-key"


@dataclass
class Unified:
    app: Any
    client: Any
    config: Path
    run_yaml: Path


def unified_config(workdir: Path, llama_stack: dict[str, Any], llm_url: str) -> Path:
    config = {
        "name": "lcore-unified-e2e",
        "service": {"host": "127.0.0.1", "port": 8080},
        "llama_stack": llama_stack,
        "config_format_version": "unified",
        "inference": {
            "default_provider": INFERENCE_PROVIDER_ID,
            "default_model": DEFAULT_LLM_MODEL,
            "providers": [{"type": "openai", "api_key_env": KEY_ENV,
                           "extra": {"base_url": llm_url}}],
        },
        "database": {"sqlite": {"db_path": str(workdir / "user.db")}},
        "authentication": {"module": "noop"},
    }
    path = workdir / "lightspeed-stack.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def provider_key() -> Iterator[None]:
    """The key in this process's environment (library mode reads it here; the server inherits
    it)."""
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = KEY
    yield
    if old is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = old


@pytest.fixture(scope="module")
async def library_unified(tmp_path_factory: pytest.TempPathFactory, scripted_llm: Any,
                          llama_stack_library_config: Path, provider_key: None,
                          ) -> AsyncIterator[Unified]:
    workdir = tmp_path_factory.mktemp("unified-library")
    profile = yaml.safe_load(llama_stack_library_config.read_text())
    for provider in profile["providers"]["inference"]:
        if provider["provider_id"] == INFERENCE_PROVIDER_ID:
            provider["config"] = {"base_url": "http://127.0.0.1:9/v1", "api_key": "wrong"}
    (workdir / "profile-run.yaml").write_text(yaml.safe_dump(profile))
    config = unified_config(workdir, {
        "use_as_library_client": True,
        "state_dir": str(workdir / "state"),
        "config": {"profile": "profile-run.yaml"},  # beside the configuration file
    }, scripted_llm.base_url)
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        yield Unified(app, test_app.test_client(), config, workdir / "state" / "run.yaml")


@pytest.fixture(scope="module")
async def server_unified(tmp_path_factory: pytest.TempPathFactory, scripted_llm: Any,
                         provider_key: None) -> AsyncIterator[Unified]:
    workdir = tmp_path_factory.mktemp("unified-server")
    port = free_port()
    config = unified_config(workdir, {
        "url": f"http://127.0.0.1:{port}",
        "state_dir": str(workdir / "state"),
        # the default baseline sets no listening address; the test stack stays on loopback
        "config": {"native_override": {"server": {"host": "127.0.0.1"}}},
    }, scripted_llm.base_url)
    run_yaml = workdir / "run.yaml"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LCORE_")}
    done = subprocess.run([str(LCORE), "config", "synthesize", "-c", str(config),
                           "-o", str(run_yaml)], capture_output=True, text=True, env=environ,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    server = LlamaStackServer(run_yaml, port)
    server.start()
    try:
        app = create_app(config, plugins=load_plugins(entrypoints=False))
        async with started(app) as test_app:
            yield Unified(app, test_app.test_client(), config, run_yaml)
    finally:
        server.stop()


async def ask(unified: Unified) -> None:
    question = f"unified {uuid.uuid4().hex[:6]}"
    response = await unified.client.post("/v2/query", json={"query": question})
    body = await response.get_json()
    assert response.status_code == 200, body
    assert body["response"] == f"Scripted answer to: {question} (user turns: 1)"


def assert_private_with_key_reference(run_yaml: Path) -> dict[str, Any]:
    assert stat.S_IMODE(run_yaml.stat().st_mode) == 0o600
    text = run_yaml.read_text()
    assert KEY not in text
    run = yaml.safe_load(text)
    [openai] = [p for p in run["providers"]["inference"]
                if p["provider_id"] == INFERENCE_PROVIDER_ID]
    assert openai["config"]["api_key"] == f"${{env.{KEY_ENV}}}"
    return run


async def test_library_mode_answers_through_the_run_yaml_it_wrote(
        library_unified: Unified) -> None:
    await ask(library_unified)
    assert library_unified.app.runtime.llama.run_config_path == str(library_unified.run_yaml)
    run = assert_private_with_key_reference(library_unified.run_yaml)
    assert run["providers"]["inference"][0]["config"]["base_url"].startswith("http://127.0.0.1")
    # Not the profile's own provider (port 9): inference.providers replaced it.
    assert "127.0.0.1:9/" not in run["providers"]["inference"][0]["config"]["base_url"]


async def test_server_mode_answers_through_a_synthesized_stack(server_unified: Unified) -> None:
    await ask(server_unified)
    run = assert_private_with_key_reference(server_unified.run_yaml)
    assert run["distro_name"] == "lcore-unified"  # LCore's default baseline
    assert run["server"] == {"host": "127.0.0.1"}
    state = server_unified.run_yaml.parent / "state"
    assert (state / "kvstore.db").exists()  # the stack keeps its state where the file says
    assert server_unified.app.runtime.llama.library is False
