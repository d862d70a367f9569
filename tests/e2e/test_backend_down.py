"""Llama Stack going down while LCore runs: 503 JSON, then recovery without restarting LCore."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llama_stack import LlamaStackServer

from .support import lcore_config, parse_sse, started


async def test_llama_stack_down_then_back(tmp_path: Path, own_stack: LlamaStackServer,
                                          llm: Any) -> None:
    app = create_app(lcore_config(tmp_path / "lcore", "server", own_stack.url),
                     plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        client = test_app.test_client()
        first = await client.post("/v2/query", json={"query": "before the outage"})
        assert first.status_code == 200
        conversation_id = (await first.get_json())["conversation_id"]

        own_stack.kill()
        down = await client.post("/v2/query", json={"query": "during the outage",
                                                     "conversation_id": conversation_id})
        assert down.status_code == 503
        assert (await down.get_json())["detail"]["response"] == "Unable to connect to OGX"
        stream = await client.post("/v2/streaming_query", json={"query": "during"})
        assert stream.status_code == 503
        ready = await client.get("/readiness")
        assert ready.status_code == 503
        report = await ready.get_json()
        # upstream's texts (llama_stack_disrupted.feature)
        assert {k: report[k] for k in ("ready", "reason", "overall_status", "impacts")} == {
            "ready": False, "reason": "Cannot connect to backend service",
            "overall_status": "unhealthy",
            "impacts": ["LLM inference unavailable", "Provider health checks unavailable"]}
        for path in ("/v1/models", "/v1/info", "/v1/tools"):
            answer = await client.get(path)
            assert answer.status_code == 503, path
            assert await answer.get_json() == {"detail": {
                "response": "Unable to connect to OGX", "cause": "Connection error."}}, path

        await asyncio.to_thread(own_stack.start)
        ready = await client.get("/readiness")
        assert ready.status_code == 200, await ready.get_data(as_text=True)
        again = await client.post("/v2/query", json={"query": "after the outage",
                                                     "conversation_id": conversation_id})
        assert again.status_code == 200, await again.get_data(as_text=True)
        body = await again.get_json()
        assert body["response"].startswith("Scripted answer to: after the outage (user turns: 2")
        # The failed turn left nothing behind: two turns, not three.
        history = await (await client.get(f"/v1/conversations/{conversation_id}")).get_json()
        assert len(history["chat_history"]) == 2


async def test_llama_stack_killed_mid_stream(tmp_path: Path, own_stack: LlamaStackServer,
                                             llm: Any) -> None:
    app = create_app(lcore_config(tmp_path / "lcore", "server", own_stack.url),
                     plugins=load_plugins(entrypoints=False))
    llm.script("long stream", text=" ".join(f"w{i}" for i in range(40)), chunk_delay=0.25)
    async with started(app) as test_app:
        client = test_app.test_client()
        task = asyncio.create_task(client.post("/v2/streaming_query",
                                               json={"query": "long stream"}))
        await asyncio.sleep(3.0)
        own_stack.kill()
        response = await asyncio.wait_for(task, 60)
        events = parse_sse(await response.get_data(as_text=True))
        assert events[0]["event"] == "start"
        assert events[-1]["event"] == "error", [e["event"] for e in events]
        conversation_id = events[0]["data"]["conversation_id"]
        assert (await client.get(f"/v1/conversations/{conversation_id}")).status_code == 404
