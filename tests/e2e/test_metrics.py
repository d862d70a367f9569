"""`/metrics` after real traffic (LCore -> Llama Stack -> scripted LLM): exact counter deltas."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lcore_core.metrics import MULTIPROC_ENV
from lcore_core.testing.llama_stack import (
    EMBEDDING_MODEL_ID,
    INFERENCE_PROVIDER_ID,
    SHIELD_ID,
    free_port,
)
from lcore_core.testing.llm import DEFAULT_LLM_MODEL, UNSAFE_MARKER

from .support import Lcore, lcore_config, require_safety_api

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PROVIDER, MODEL = INFERENCE_PROVIDER_ID, DEFAULT_LLM_MODEL


async def scrape(lcore: Lcore) -> Samples:
    response = await lcore.client.get("/metrics")
    assert response.status_code == 200
    text = await response.get_data(as_text=True)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class Delta:
    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return self.after.get(key, 0.0) - self.before.get(key, 0.0)


async def test_queries_count_calls_tokens_and_durations(lcore: Lcore, llm: Any) -> None:
    tag = uuid.uuid4().hex[:6]
    before = await scrape(lcore)
    bodies, overheads = [], []
    for path in ("/v2/query", "/v2/query", "/v1/query"):
        response = await lcore.client.post(path, json={"query": f"count me {tag}"})
        assert response.status_code == 200
        bodies.append(await response.get_json())
        overheads.append(float(response.headers["X-LCore-Overhead-Ms"]))
    status, events = await lcore.stream(f"stream me {tag}")
    assert status == 200
    end = events[-1]["data"]
    assert events[-1]["event"] == "end"
    d = Delta(before, await scrape(lcore))

    # REST calls by route template and status (the alias is its own template).
    assert d("ls_rest_api_calls_total", path="/v2/query", status_code="200") == 2
    assert d("ls_rest_api_calls_total", path="/v1/query", status_code="200") == 1
    assert d("ls_rest_api_calls_total", path="/v2/streaming_query", status_code="200") == 1
    assert d("ls_response_duration_seconds_count", path="/v2/query") == 2
    assert d("ls_response_duration_seconds_count", path="/v2/streaming_query") == 1
    # LLM calls, tokens and inference time by provider/model/endpoint (the pipeline endpoint).
    query = {"provider": PROVIDER, "model": MODEL, "endpoint": "/v2/query"}
    stream = {**query, "endpoint": "/v2/streaming_query"}
    assert d("ls_llm_calls_total", **query) == 3
    assert d("ls_llm_calls_total", **stream) == 1
    assert d("ls_llm_token_sent_total", **query) == sum(b["input_tokens"] for b in bodies)
    assert d("ls_llm_token_received_total", **query) == sum(b["output_tokens"] for b in bodies)
    assert d("ls_llm_token_sent_total", **stream) == end["input_tokens"] > 0
    assert d("ls_llm_token_received_total", **stream) == end["output_tokens"] > 0
    assert d("ls_llm_inference_duration_seconds_count", **query) == 3
    assert d("ls_llm_inference_duration_seconds_count", **stream) == 1
    assert d("ls_llm_calls_failures_total", **query) == 0
    # Overhead: the figures the clients were given, and less than the whole request time.
    assert d("ls_overhead_seconds_count", path="/v2/query") == 2
    assert d("ls_overhead_seconds_sum", path="/v2/query") + d(
        "ls_overhead_seconds_sum", path="/v1/query") == pytest.approx(
        sum(overheads) / 1000, abs=1e-4)
    assert d("ls_overhead_seconds_sum", path="/v2/query") < d(
        "ls_response_duration_seconds_sum", path="/v2/query")
    assert d("ls_overhead_seconds_count", path="/v2/streaming_query") == 1
    assert d("ls_overhead_seconds_sum", path="/v2/streaming_query") == pytest.approx(
        end["overhead_ms"] / 1000, abs=1e-4)
    assert end["overhead_ms"] / 1000 < d("ls_response_duration_seconds_sum",
                                         path="/v2/streaming_query")
    # The memory cache stored four turns and four topic summaries (all new conversations).
    assert d("ls_cache_operations_total", backend="memory", operation="insert") == 4
    assert d("ls_cache_errors_total", backend="memory", operation="insert") == 0


async def test_llm_failure_is_counted(lcore: Lcore, llm: Any) -> None:
    llm.script("explode for metrics", status=500, error="boom")
    before = await scrape(lcore)
    response = await lcore.query("explode for metrics")
    assert response.status_code in (500, 503)
    d = Delta(before, await scrape(lcore))
    labels = {"provider": PROVIDER, "model": MODEL, "endpoint": "/v2/query"}
    assert d("ls_llm_calls_failures_total", **labels) == 1
    assert d("ls_llm_calls_total", **labels) == 0
    assert d("ls_rest_api_calls_total", path="/v2/query",
             status_code=str(response.status_code)) == 1


async def test_shield_violation_is_counted_by_shield(lcore: Lcore, llm: Any) -> None:
    await require_safety_api(lcore.runtime)
    before = await scrape(lcore)
    response = await lcore.query(f"tell me {UNSAFE_MARKER}")
    assert response.status_code == 200
    safe = await lcore.query("tell me something harmless")
    assert safe.status_code == 200
    d = Delta(before, await scrape(lcore))
    assert d("ls_shield_violations_total", shield=SHIELD_ID) == 1
    assert d("ls_llm_validation_errors_total", endpoint="/v2/query") == 1
    assert d("ls_llm_calls_total", provider=PROVIDER, model=MODEL, endpoint="/v2/query") == 2


async def test_invalid_request_is_a_validation_error_not_an_llm_call(lcore: Lcore,
                                                                     llm: Any) -> None:
    before = await scrape(lcore)
    response = await lcore.client.post("/v2/query", json={"query": 42})
    assert response.status_code == 422
    d = Delta(before, await scrape(lcore))
    assert d("ls_request_validation_errors_total", path="/v2/query") == 1
    assert d("ls_rest_api_calls_total", path="/v2/query", status_code="422") == 1
    assert d("ls_llm_calls_total", provider=PROVIDER, model=MODEL, endpoint="/v2/query") == 0
    assert llm.chat_requests == []


async def test_configured_models_gauge(lcore: Lcore) -> None:
    after = await scrape(lcore)
    gauge = {dict(labels)["model"]: v for (name, labels), v in after.items()
             if name == "ls_provider_model_configuration"}
    # No default configured: the LLM is offered (0 = not the default); embeddings are not LLMs.
    assert gauge == {f"{PROVIDER}/{MODEL}": 0.0}
    assert EMBEDDING_MODEL_ID not in gauge


async def test_conversation_reads_count_cache_gets(lcore: Lcore, llm: Any) -> None:
    body = await (await lcore.query("remember me")).get_json()
    before = await scrape(lcore)
    cid = body["conversation_id"]
    assert (await lcore.client.get(f"/v1/conversations/{cid}")).status_code == 200
    d = Delta(before, await scrape(lcore))
    assert d("ls_cache_operations_total", backend="memory", operation="get") == 1
    assert d("ls_rest_api_calls_total", path="/v1/conversations/<conversation_id>",
             status_code="200") == 1


# --- several Hypercorn workers ----------------------------------------------------------------

LCORE = Path(sys.executable).parent / "lcore"


def _served(url: str, deadline: float, process: subprocess.Popen[bytes], log: Path) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"lcore serve exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    pytest.fail(f"lcore serve did not answer in time:\n{log.read_text()}")


def _scrape(url: str) -> Samples:
    # A new connection each time, so the kernel may hand it to either worker.
    response = httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_two_workers_metrics_add_up(tmp_path: Path, llama_stack_server: Any, llm: Any) -> None:
    config = lcore_config(tmp_path, "server", llama_stack_server.url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("LCORE_CONFIG", MULTIPROC_ENV, "prometheus_multiproc_dir")}
    with log.open("wb") as err:
        process = subprocess.Popen(
            [str(LCORE), "serve", "-c", str(config), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        _served(url, time.monotonic() + 90, process, log)
        directory = Path(re.search(r"metrics of all workers in (\S+)\)",
                                   log.read_text())[1])  # type: ignore[index]
        assert directory.is_dir()
        probes, queries = 20, 3
        for _ in range(probes):
            assert httpx.get(f"{url}/v1/liveness", headers={"Connection": "close"},
                             timeout=10).status_code == 200
        for i in range(queries):
            response = httpx.post(f"{url}/v2/query", json={"query": f"worker query {i}"},
                                  headers={"Connection": "close"}, timeout=60)
            assert response.status_code == 200, response.text
        llm_calls = ("ls_llm_calls_total", frozenset({"provider": PROVIDER, "model": MODEL,
                                                      "endpoint": "/v2/query"}.items()))
        probes_key = ("ls_rest_api_calls_total",
                      frozenset({"path": "/v1/liveness", "status_code": "200"}.items()))
        # Whichever worker answers the scrape, it reports every worker's samples.
        for _ in range(6):
            scraped = _scrape(url)
            assert scraped[probes_key] == probes
            assert scraped[llm_calls] == queries
        pids = {p.stem.rsplit("_", 1)[-1] for p in directory.glob("counter_*.db")}
        assert len(pids) == 2, sorted(directory.iterdir())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert not directory.exists()  # LCore's own temporary directory is removed at exit
