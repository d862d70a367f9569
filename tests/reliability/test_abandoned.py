"""A non-streamed query whose client goes away before the answer still leaves its log line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from .support import LcoreProcess, write_config


async def test_abandoned_query_is_logged_with_499(llama_stack_server: Any, llm: Any,
                                                  tmp_path: Path) -> None:
    # The answer takes about 4 s; the client gives up after one.
    llm.script("abandoned question", text=" ".join(f"w{i}" for i in range(40)),
               chunk_delay=0.1)
    config = write_config(tmp_path / "lcore.yaml", llama_stack_server.url,
                          service={"host": "127.0.0.1", "port": 8080, "log_format": "json"})
    lcore = LcoreProcess(config).start()
    try:
        lcore.wait_ready()
        async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
            ask = asyncio.ensure_future(http.post(
                f"{lcore.url}/v2/query", headers={"X-Request-ID": "walked-away-1"},
                json={"query": "abandoned question", "generate_topic_summary": False}))
            while not any("abandoned question" in r.text for r in llm.chat_requests):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            ask.cancel()  # closes the connection: the client is gone
            lines: list[dict[str, Any]] = []
            for _ in range(200):
                lines = [json.loads(line) for line in lcore.log_path.read_text().splitlines()
                         if line.startswith("{") and "walked-away-1" in line]
                if any(line.get("event") == "request" for line in lines):
                    break
                await asyncio.sleep(0.1)
    finally:
        lcore.stop()
    [logged] = [line for line in lines if line.get("event") == "request"]
    assert logged["status"] == 499 and logged["abandoned"] is True, logged
    assert logged["path"] == "/v2/query" and logged["duration_ms"] >= 500
