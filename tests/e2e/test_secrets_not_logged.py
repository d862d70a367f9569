"""A real `lcore serve` configured with every kind of secret: none of them reaches its log, and
the request log lines carry what an operator needs (request id, user, path, status, model...)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from lcore_core.testing.llama_stack import free_port
from lcore_core.testing.llm import DEFAULT_LLM_MODEL

from .support import lcore_config, parse_sse

LCORE = Path(sys.executable).parent / "lcore"
PG = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
      "ssl_mode": "disable", "gss_encmode": "disable"}
# Every value is unique and greppable; none of them may appear in the log.
SECRETS = {name: f"{name}-{uuid.uuid4().hex}" for name in (
    "api-key", "wrong-api-key", "llama-stack-api-key", "postgres-password", "mcp-file-header",
    "mcp-env-header", "mcp-client-header", "malformed-mcp-header")}


@pytest.fixture
def pg_namespace() -> Iterator[str]:
    name = f"lcore_secrets_{uuid.uuid4().hex[:10]}"
    yield name
    # The machine's PostgreSQL trusts local connections: the configured password is not needed.
    conn = psycopg.connect(host=PG["host"], port=PG["port"], dbname=PG["db"], user=PG["user"],
                           connect_timeout=5)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    conn.close()


def _wait(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"lcore serve exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=2).status_code in (200, 401):
                return
        time.sleep(0.3)
    pytest.fail(f"lcore serve did not answer in time:\n{log.read_text()}")


def test_no_secret_is_logged(tmp_path: Path, llama_stack_server: Any, llm: Any,
                             mcp_server: Any, pg_namespace: str) -> None:
    header_file = tmp_path / "mcp-header"
    header_file.write_text(SECRETS["mcp-file-header"] + "\n")
    servers = [{"name": "weather", "url": mcp_server.url,
                "authorization_headers": {"X-Api-Key": str(header_file),
                                          "Authorization": "client",
                                          "X-Env-Token": "${env.LCORE_SECRET_TEST_TOKEN}"}}]
    config = lcore_config(
        tmp_path, "server", llama_stack_server.url, mcp_servers=servers,
        llama_stack={"url": llama_stack_server.url, "api_key": SECRETS["llama-stack-api-key"]},
        authentication={"module": "api-key-token",
                        "api_key_config": {"api_key": SECRETS["api-key"]}},
        database={"postgres": {**PG, "namespace": pg_namespace,
                               "password": SECRETS["postgres-password"]}})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "stderr.log"
    env = {**{k: v for k, v in os.environ.items() if k != "LCORE_CONFIG"},
           "LCORE_SECRET_TEST_TOKEN": SECRETS["mcp-env-header"], "LCORE_TRACE_HOOKS": "1"}
    with log.open("wb") as err:
        process = subprocess.Popen(
            [str(LCORE), "serve", "-c", str(config), "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=err, env=env)
    auth = {"Authorization": f"Bearer {SECRETS['api-key']}"}
    mcp = {"MCP-HEADERS": json.dumps(
        {"weather": {"Authorization": f"Bearer {SECRETS['mcp-client-header']}"}})}
    llm.script("weather in brno", tool_call=("get_weather", {"city": "Brno"}),
               then="Weather: {tool_output}")
    llm.script("explode please", status=500, error="boom")
    try:
        _wait(url, process, log)
        answered = httpx.post(f"{url}/v2/query", json={"query": "weather in brno"},
                              headers={**auth, **mcp, "X-Request-ID": "secret-test-1"},
                              timeout=60)
        assert answered.status_code == 200, answered.text
        assert [c["name"] for c in answered.json()["tool_calls"]] == ["mcp_list_tools",
                                                                   "get_weather"]
        sent = {k.lower(): v for k, v in mcp_server.tool_calls[-1].headers.items()}
        assert sent["x-api-key"] == SECRETS["mcp-file-header"]  # the secrets were used
        assert sent["x-env-token"] == SECRETS["mcp-env-header"]
        streamed = httpx.post(f"{url}/v2/streaming_query", json={"query": "stream it"},
                              headers={**auth, **mcp}, timeout=60)
        assert parse_sse(streamed.text)[-1]["event"] == "end"
        assert httpx.post(f"{url}/v2/query", json={"query": "explode please"}, headers=auth,
                          timeout=60).status_code in (500, 503)
        wrong = {"Authorization": f"Bearer {SECRETS['wrong-api-key']}"}
        assert httpx.get(f"{url}/v1/conversations", headers=wrong).status_code == 401
        malformed = {"MCP-HEADERS": '{"weather": {"Authorization": "'
                                    + SECRETS["malformed-mcp-header"]}
        assert httpx.post(f"{url}/v2/query", json={"query": "x"},
                          headers={**auth, **malformed}).status_code == 400
        assert httpx.get(f"{url}/v1/conversations", headers=auth).status_code == 200
        assert httpx.get(f"{url}/metrics", headers=auth).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    text = log.read_text()
    leaked = [name for name, secret in SECRETS.items() if secret in text]
    assert leaked == [], f"secrets in the log: {leaked}"

    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request"]
    query = next(r for r in requests if r["request_id"] == "secret-test-1")
    assert query["path"] == "/v2/query" and query["status"] == 200
    assert query["user_id"] and query["duration_ms"] > 0 and query["overhead_ms"] >= 0
    assert query["model"] == DEFAULT_LLM_MODEL and query["provider"] == "openai"
    assert query["input_tokens"] == answered.json()["input_tokens"]
    assert query["output_tokens"] == answered.json()["output_tokens"]
    stream = next(r for r in requests if r["path"] == "/v2/streaming_query")
    assert stream["streamed"] is True and stream["output_tokens"] > 0
    assert {r["status"] for r in requests} >= {200, 400, 401}
