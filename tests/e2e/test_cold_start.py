"""A burst of first queries against a Llama Stack that has never made a conversation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml

from .support import lcore_config, started


@pytest.mark.parametrize("state", ["response_chain", "llama_stack_conversation"])
async def test_first_queries_in_a_burst_all_succeed(tmp_path: Path, scripted_llm: Any,
                                                    state: str) -> None:
    """Llama Stack 0.7 creates its conversations table on first use and concurrent first
    creates race on it ("no such table", 500s); LCore lets the first create through alone.
    A chain of stored responses must survive the same burst."""
    stack = LlamaStackServer(write_run_yaml(tmp_path / "stack", scripted_llm.base_url))
    await asyncio.to_thread(stack.start)
    try:
        app = create_app(lcore_config(tmp_path / "lcore", "server", stack.url, service={
                             "host": "127.0.0.1", "port": 8080, "conversation_state": state}),
                         plugins=load_plugins(entrypoints=False))
        async with started(app) as test_app:
            client = test_app.test_client()
            responses = await asyncio.gather(*(
                client.post("/v2/query", json={"query": f"cold {i}", "no_tools": True,
                                               "generate_topic_summary": False})
                for i in range(16)))
            statuses = [r.status_code for r in responses]
            assert statuses == [200] * 16, [await r.get_json() for r in responses]
            ids = {(await r.get_json())["conversation_id"] for r in responses}
            assert len(ids) == 16
            await app.runtime.drain()
    finally:
        await asyncio.to_thread(stack.stop)


async def test_first_answer_goes_alone_then_answers_run_together(tmp_path: Path,
                                                                 llm: Any) -> None:
    """A fresh Llama Stack answers a burst of first calls very slowly, so until one answer has
    succeeded LCore asks for one at a time; after that, calls run side by side."""
    stack = LlamaStackServer(write_run_yaml(tmp_path / "stack", llm.base_url))
    await asyncio.to_thread(stack.start)
    try:
        app = create_app(lcore_config(tmp_path / "lcore", "server", stack.url),
                         plugins=load_plugins(entrypoints=False))
        async with started(app) as test_app:
            client = test_app.test_client()

            def arrived(marker: str) -> int:
                return sum(marker in r.text for r in llm.chat_requests)

            async def ask(query: str) -> int:
                response = await client.post("/v2/query", json={
                    "query": query, "no_tools": True, "generate_topic_summary": False})
                return response.status_code

            async def burst(label: str, *, cold: bool) -> list[int]:
                """A slow first answer (6 s), and four more asked while it is being written:
                how many of the four reached the LLM while it was, and how many in the end."""
                llm.script(f"{label} slow", text="one two three four five six",
                           chunk_delay=1.0)
                first = asyncio.ensure_future(ask(f"{label} slow"))
                while not arrived(f"{label} slow"):
                    await asyncio.sleep(0.05)
                others = [asyncio.ensure_future(ask(f"{label} quick {i}")) for i in range(4)]
                if cold:
                    # Halfway through the slow answer: a busy machine only makes it slower.
                    await asyncio.sleep(3.0)
                else:
                    # A busy machine may take a while to pass the four on: wait for them as
                    # long as the slow answer is still being written.
                    while arrived(f"{label} quick") < 4 and not first.done():
                        await asyncio.sleep(0.05)
                seen = arrived(f"{label} quick") if not first.done() else -1
                assert [await first, *await asyncio.gather(*others)] == [200] * 5
                return [seen, arrived(f"{label} quick")]

            # Cold: the four wait at the gate while the first answer is being written.
            assert await burst("cold", cold=True) == [0, 4]
            # Warm: they reach the LLM while the slow answer is still on its way.
            assert await burst("warm", cold=False) == [4, 4]
            await app.runtime.drain()
    finally:
        await asyncio.to_thread(stack.stop)
