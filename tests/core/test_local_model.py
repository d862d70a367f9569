"""The supervised local model server: start, readiness, restart after a crash, stop.

A small fake server (an OpenAI-style `/v1/models` over http.server) stands in for llama.cpp,
so these tests need neither llama-cpp-python nor a model.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.config import Settings
from lcore_core.config.schema import LocalModelSchema
from lcore_core.errors import BackendUnavailable
from lcore_core.local_model import LocalModel
from lcore_core.plugins import load_plugins

FAKE_SERVER = textwrap.dedent('''
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    config = json.load(open(sys.argv[sys.argv.index("--config_file") + 1]))
    if config["models"][0]["model_alias"] == "crash-at-start":
        sys.exit(3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": m["model_alias"]} for m in config["models"]]})
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    HTTPServer((config["host"], config["port"]), Handler).serve_forever()
''')


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")

    def make(**overrides: Any) -> Settings:
        raw = {"command": [sys.executable, str(script)], "model_path": str(model),
               "url_env": "LCORE_TEST_LOCAL_URL", "restart_delay": 0, "startup_timeout": 20,
               **overrides}
        return Settings.wrap(LocalModelSchema().load(raw))

    return make


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); its state in /proc says whether it really runs
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


async def _wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_start_exports_url_restarts_after_crash_and_stops(settings, monkeypatch):
    monkeypatch.delenv("LCORE_TEST_LOCAL_URL", raising=False)
    local = LocalModel(settings())
    await local.start()
    try:
        assert os.environ["LCORE_TEST_LOCAL_URL"] == local.url
        assert local.url.startswith("http://127.0.0.1:") and local.port > 0
        assert await local.health() is None
        first = local.process
        assert first is not None
        first.kill()  # a crash

        async def restarted() -> bool:
            return local.process is not first and await local.health() is None

        await _wait_for(restarted)
        assert local.restarts == 1
    finally:
        await local.stop()
    assert local.process is not None and local.process.returncode is not None
    assert not _alive(local.process.pid)
    assert await local.health() == "the local model server is not running"


async def test_gives_up_after_max_restarts(settings):
    local = LocalModel(settings(max_restarts=0))
    await local.start()
    try:
        assert local.process is not None
        local.process.kill()
        await local.process.wait()
        await asyncio.sleep(0.3)
        assert local.restarts == 0
        assert await local.health() == "the local model server is not running"
    finally:
        await local.stop()


async def test_server_that_exits_at_start_fails_with_its_status(settings):
    local = LocalModel(settings(model_alias="crash-at-start"))
    with pytest.raises(BackendUnavailable) as info:
        await local.start()
    assert "exit status 3" in info.value.cause


async def test_not_started_when_another_provider_is_configured(settings, monkeypatch):
    monkeypatch.delenv("LCORE_TEST_LOCAL_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    local = LocalModel(settings(unless_env=["OPENAI_API_KEY", "OLLAMA_URL"]))
    assert local.skip_reason() == "OPENAI_API_KEY is set, so that provider is used instead"
    await local.start()
    assert local.process is None and "LCORE_TEST_LOCAL_URL" not in os.environ
    assert local.lcore_readiness() == []
    assert LocalModel(settings(enabled=False)).skip_reason() == "local_model.enabled is false"


def test_server_config_has_a_chat_and_a_mean_pooled_embedding_model(settings):
    config = LocalModel(settings(threads=2, context_size=1024)).server_config()
    chat, embedding = config["models"]
    assert chat["model_alias"] == "smollm2" and "embedding" not in chat
    assert (chat["n_ctx"], chat["n_threads"]) == (1024, 2)
    assert embedding["model_alias"] == "smollm2-embed"
    assert embedding["embedding"] is True
    assert embedding["kv_overrides"] == ["llama.pooling_type=int:1"]  # mean pooling
    assert chat["model"] == embedding["model"]
    assert len(LocalModel(settings(embedding_alias=None)).server_config()["models"]) == 1


def test_default_command_is_llama_cpp_server(tmp_path):
    local = LocalModel(Settings.wrap(LocalModelSchema().load({})))
    assert local.command(tmp_path / "c.json") == [
        sys.executable, "-m", "llama_cpp.server", "--config_file", str(tmp_path / "c.json")]


async def test_app_starts_reports_and_stops_the_server(settings, tmp_path, monkeypatch):
    monkeypatch.delenv("LCORE_TEST_LOCAL_URL", raising=False)
    local_settings = dict(settings())
    config = tmp_path / "lightspeed-stack.yaml"
    config.write_text(json.dumps({
        # No Llama Stack here: the service starts without it (degraded mode), after one try.
        "llama_stack": {"url": "http://127.0.0.1:9", "max_retries": 1,
                        "allow_degraded_mode": True},
        "database": {"sqlite": {"db_path": str(tmp_path / "user.db")}},
        "local_model": {k: v for k, v in local_settings.items() if v is not None},
    }))
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with app.test_app() as test_app:
        local = app.runtime.plugins.pm.get_plugin("local-model")
        assert os.environ["LCORE_TEST_LOCAL_URL"] == local.url
        body = await (await test_app.test_client().get("/readiness")).get_json()
        statuses = {p["provider_id"]: p["status"] for p in body["providers"]}
        assert statuses["local-model"] == "ok"
        pid = local.process.pid
        assert _alive(pid)
    assert not _alive(pid)
