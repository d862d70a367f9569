"""Reaching Llama Stack at start-up (`llama_stack.max_retries`, `retry_delay`,
`allow_degraded_mode`) and its version in `/info`, against a real Llama Stack."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llama_stack import LlamaStackServer, free_port, write_run_yaml

from .support import Lcore, lcore_config, started

RETRYING = "llama stack not reachable yet"
# More attempts than the default max_retries (5): only the configured count lets start-up wait.
ATTEMPTS_BEFORE_THE_STACK = 6


async def test_info_reports_the_llama_stack_version(lcore: Lcore, llama_stack_server: Any,
                                                    request: pytest.FixtureRequest) -> None:
    # the backend LCore is connected to (library mode: the same Llama Stack as the server)
    backend = request.getfixturevalue("ogx_server") if lcore.mode == "ogx" else llama_stack_server
    with backend.http_client() as http:
        expected = http.get(f"{backend.url}/v1/version", timeout=10).json()["version"]
    for path in ("/v1/info", "/info"):
        response = await lcore.client.get(path)
        assert response.status_code == 200, await response.get_data(as_text=True)
        assert (await response.get_json())["llama_stack_version"] == expected


def retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum(RETRYING in r.getMessage() for r in caplog.records)


async def wait_for_retries(caplog: pytest.LogCaptureFixture, count: int,
                           starting: asyncio.Task[Any]) -> None:
    deadline = time.monotonic() + 120
    while retries(caplog) < count:
        assert not starting.done(), "start-up ended before Llama Stack was started"
        assert time.monotonic() < deadline, "LCore did not retry"
        await asyncio.sleep(0.1)


async def test_start_up_waits_for_a_llama_stack_that_starts_late(
        tmp_path: Path, llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    stack = LlamaStackServer(write_run_yaml(tmp_path / "stack", llm.base_url), port=port)
    config = lcore_config(tmp_path / "lcore", "server", stack.url,
                          llama_stack={"url": stack.url, "max_retries": 200, "retry_delay": 1})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    serving = started(app)
    try:
        with caplog.at_level(logging.WARNING, logger="lcore.llama"):
            starting = asyncio.create_task(serving.__aenter__())
            await wait_for_retries(caplog, ATTEMPTS_BEFORE_THE_STACK, starting)
            await asyncio.to_thread(stack.start)
            test_app = await asyncio.wait_for(starting, 60)
        client = test_app.test_client()
        assert app.runtime.degraded is None
        ready = await client.get("/readiness")
        assert ready.status_code == 200, await ready.get_data(as_text=True)
        assert (await ready.get_json())["overall_status"] == "healthy"
        answer = await client.post("/v2/query", json={"query": "late but here",
                                                       "generate_topic_summary": False})
        assert answer.status_code == 200, await answer.get_data(as_text=True)
        metrics = await (await client.get("/metrics")).get_data(as_text=True)
        assert "ls_started_in_degraded_mode 0.0" in metrics
    finally:
        await serving.__aexit__(None, None, None)
        await asyncio.to_thread(stack.stop)


async def test_degraded_start_then_llama_stack_arrives(
        tmp_path: Path, llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    stack = LlamaStackServer(write_run_yaml(tmp_path / "stack", llm.base_url), port=port)
    config = lcore_config(tmp_path / "lcore", "server", stack.url,
                          llama_stack={"url": stack.url, "max_retries": 2, "retry_delay": 1,
                                       "allow_degraded_mode": True})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    try:
        with caplog.at_level(logging.WARNING, logger="lcore.llama"):
            async with started(app) as test_app:
                client = test_app.test_client()
                assert retries(caplog) == 1  # two attempts
                assert app.runtime.degraded is not None
                ready = await client.get("/readiness")
                body = await ready.get_json()
                assert ready.status_code == 200, body
                assert (body["ready"], body["overall_status"]) == (True, "degraded")
                assert (await client.get("/liveness")).status_code == 200
                down = await client.post("/v2/query", json={"query": "nobody home"})
                assert down.status_code == 503
                assert (await down.get_json())["detail"]["response"] == \
                    "Unable to connect to OGX"
                assert (await client.get("/v1/info")).status_code == 503

                await asyncio.to_thread(stack.start)
                # The same process serves as soon as Llama Stack answers.
                answer = await client.post("/v2/query", json={"query": "now you are here",
                                                               "generate_topic_summary": False})
                assert answer.status_code == 200, await answer.get_data(as_text=True)
                ready = await client.get("/readiness")
                assert ready.status_code == 200
                assert (await ready.get_json())["overall_status"] == "healthy"
                info = await client.get("/v1/info")
                assert info.status_code == 200
                assert (await info.get_json())["llama_stack_version"]
    finally:
        await asyncio.to_thread(stack.stop)
