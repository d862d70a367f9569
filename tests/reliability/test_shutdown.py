"""SIGTERM to `lcore serve` while answers stream: they finish, then state is on disk."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import LcoreProcess, parse_sse, write_config

USER_QUOTA = 100_000
STREAMS = 3


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute(sql))


async def test_sigterm_lets_open_streams_finish_and_flushes_state(
        llama_stack_server: Any, llm: Any, tmp_path: Path) -> None:
    # Each answer streams for about 3 s; the grace period is far longer.
    llm.script("slow story", text=" ".join(f"w{i}" for i in range(30)), chunk_delay=0.1)
    config = write_config(
        tmp_path / "lcore.yaml", llama_stack_server.url,
        service={"host": "127.0.0.1", "port": 8080, "graceful_shutdown_seconds": 30},
        conversation_cache={"type": "sqlite", "sqlite": {"db_path": str(tmp_path / "cache.db")}},
        quota_handlers={"sqlite": {"db_path": str(tmp_path / "quota.db")},
                        "enable_token_history": True, "reservation_tokens": 100,
                        "reservation_chars_per_token": 0,
                        "limiters": [{"name": "user-daily", "type": "user_limiter",
                                      "initial_quota": USER_QUOTA, "quota_increase": 0,
                                      "period": "1 day"}]})
    lcore = LcoreProcess(config).start()
    try:
        lcore.wait_ready()
        async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
            warm = await http.post(f"{lcore.url}/v2/query?user_id=warm",
                                   json={"query": "warm up", "generate_topic_summary": False})
            assert warm.status_code == 200, warm.text
            streaming = asyncio.Event()
            first_tokens = 0

            async def stream(n: int) -> str:
                nonlocal first_tokens
                async with http.stream("POST", f"{lcore.url}/v2/streaming_query?user_id=u{n}",
                                       json={"query": f"slow story {n}",
                                             "generate_topic_summary": False}) as response:
                    assert response.status_code == 200
                    body, counted = "", False
                    async for chunk in response.aiter_text():
                        body += chunk
                        if not counted and '"event": "token"' in body:
                            counted = True
                            first_tokens += 1
                            if first_tokens == STREAMS:
                                streaming.set()
                    return body

            tasks = [asyncio.create_task(stream(n)) for n in range(STREAMS)]
            await asyncio.wait_for(streaming.wait(), 30)
            lcore.signal(signal.SIGTERM)  # every stream is mid-answer
            bodies = await asyncio.wait_for(asyncio.gather(*tasks), 40)
            # No new work is accepted while draining.
            with pytest.raises(httpx.TransportError):
                await http.get(f"{lcore.url}/liveness")
        assert lcore.wait(40) == 0, lcore.log_tail()
    finally:
        lcore.stop()

    answered: dict[str, tuple[str, int]] = {}
    for n, body in enumerate(bodies):
        events = parse_sse(body)
        kinds = [e["event"] for e in events]
        assert kinds[0] == "start" and kinds[-1] == "end", kinds
        text = "".join(e["data"]["token"] for e in events if e["event"] == "token")
        assert text.split() == [f"w{i}" for i in range(30)]
        end = events[-1]["data"]
        answered[f"u{n}"] = (events[0]["data"]["conversation_id"],
                             end["input_tokens"] + end["output_tokens"])
    # State written before the process exited: user DB, cache and quota agree with the streams.
    turns = dict(rows(tmp_path / "user.db", "SELECT user_id, id FROM lcore_user_conversation"))
    for user, (conversation, _) in answered.items():
        assert turns[user] == conversation
    cached = dict(rows(tmp_path / "cache.db", "SELECT conversation_id, response FROM "
                                              "lcore_cache_entry"))
    for conversation, _ in answered.values():
        assert cached[conversation].split() == [f"w{i}" for i in range(30)]
    available = dict(rows(tmp_path / "quota.db", "SELECT subject_id, available FROM "
                                                 "lcore_quota_limit"))
    for user, (_, tokens) in answered.items():
        assert USER_QUOTA - available[user] == tokens


async def test_grace_period_caps_shutdown(llama_stack_server: Any, llm: Any,
                                          tmp_path: Path) -> None:
    """A stream longer than the grace period is cut; the process still exits cleanly, with the
    turn neither stored nor charged."""
    llm.script("endless story", text=" ".join(f"e{i}" for i in range(60)), chunk_delay=0.25)
    config = write_config(
        tmp_path / "lcore.yaml", llama_stack_server.url,
        service={"host": "127.0.0.1", "port": 8080, "graceful_shutdown_seconds": 1},
        quota_handlers={"sqlite": {"db_path": str(tmp_path / "quota.db")},
                        "reservation_tokens": 100, "reservation_chars_per_token": 0,
                        "limiters": [{"name": "user-daily", "type": "user_limiter",
                                      "initial_quota": USER_QUOTA, "quota_increase": 0,
                                      "period": "1 day"}]})
    lcore = LcoreProcess(config).start()
    try:
        lcore.wait_ready()
        async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
            body, signalled = "", False
            async with http.stream("POST", f"{lcore.url}/v2/streaming_query?user_id=cut",
                                   json={"query": "endless story",
                                         "generate_topic_summary": False}) as response:
                assert response.status_code == 200
                try:
                    async for chunk in response.aiter_text():
                        body += chunk
                        if '"event": "token"' in body and not signalled:
                            signalled = True
                            lcore.signal(signal.SIGTERM)
                except httpx.TransportError:
                    pass  # the cut
        # 60 tokens take 15 s; the grace period is 1 s: the process is gone long before.
        assert lcore.wait(10) == 0, lcore.log_tail()
        assert "grace period over" in lcore.log_tail()
    finally:
        lcore.stop()
    kinds = [e["event"] for e in parse_sse(body)]
    assert "end" not in kinds
    assert not (tmp_path / "user.db").exists() or not rows(
        tmp_path / "user.db", "SELECT id FROM lcore_user_conversation WHERE user_id = 'cut'")
    available = dict(rows(tmp_path / "quota.db", "SELECT subject_id, available FROM "
                                                 "lcore_quota_limit"))
    assert available.get("cut", USER_QUOTA) == USER_QUOTA
