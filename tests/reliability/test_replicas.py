"""Three `lcore serve` processes on one PostgreSQL schema, behind a round-robin client."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import httpx

from .support import LcoreProcess, pg_rows, postgres, wait_for, write_config

USER_QUOTA = 1_000_000
TICK_S = 3
QUERY = {"generate_topic_summary": False, "no_tools": True}


def replica_config(tmp_path: Path, schema: str, stack_url: str) -> Path:
    pg = postgres(schema, max_connections=4)
    return write_config(
        tmp_path / "lcore.yaml", stack_url,
        database={"postgres": postgres(schema)},
        conversation_cache={"type": "postgres", "postgres": pg},
        quota_handlers={
            "postgres": pg, "enable_token_history": True, "reservation_tokens": 50,
            "reservation_chars_per_token": 0, "scheduler": {"period": 1},
            "limiters": [
                {"name": "user-daily", "type": "user_limiter", "initial_quota": USER_QUOTA,
                 "quota_increase": 0, "period": "1 day"},
                # resets every TICK_S seconds: each reset bumps the row's epoch once
                {"name": "tick", "type": "cluster_limiter", "initial_quota": 10 * USER_QUOTA,
                 "quota_increase": 0, "period": f"{TICK_S} seconds"}]})


async def test_three_replicas_share_conversations_quota_and_scheduler(
        schema: str, llama_stack_server: Any, llm: Any, tmp_path: Path) -> None:
    config = replica_config(tmp_path, schema, llama_stack_server.url)
    replicas = [LcoreProcess(config, name=f"replica{i}").start() for i in range(3)]
    try:
        for replica in replicas:
            replica.wait_ready()
        urls = itertools.cycle([r.url for r in replicas])
        async with httpx.AsyncClient(timeout=60, trust_env=False) as http:

            async def query(user: str, text: str, **extra: Any) -> dict[str, Any]:
                response = await http.post(f"{next(urls)}/v2/query?user_id={user}",
                                           json={"query": text, **QUERY, **extra})
                assert response.status_code == 200, response.text
                return dict(response.json())

            # A conversation started on one replica, continued on the next, read on the third.
            first = await query("alice", "first question")
            conversation = first["conversation_id"]
            await query("alice", "second question", conversation_id=conversation)
            for replica in replicas:
                got = await http.get(f"{replica.url}/v2/conversations/{conversation}"
                                     f"?user_id=alice")
                assert got.status_code == 200, got.text
                turns = got.json()["chat_history"]
                assert [t["messages"][0]["content"] for t in turns] == [
                    "first question", "second question"]
                listed = await http.get(f"{replica.url}/v2/conversations?user_id=alice")
                ids = [c["conversation_id"] for c in listed.json()["conversations"]]
                assert conversation in ids

            [(epoch0, reset0)] = pg_rows(schema, "SELECT epoch, reset_at FROM lcore_quota_limit "
                                                 "WHERE limiter = 'tick'")
            # Concurrent load, round robin: the quota spent is exactly the tokens answered.
            gate = asyncio.Semaphore(6)
            users = ["bob", "carol", "dave"]

            async def one(n: int) -> tuple[str, int]:
                user = users[n % len(users)]
                async with gate:
                    body = await query(user, f"load question {n}")
                return user, body["input_tokens"] + body["output_tokens"]

            spent = await asyncio.gather(*(one(n) for n in range(36)))
            available = dict(pg_rows(schema, "SELECT subject_id, available FROM "
                                             "lcore_quota_limit WHERE limiter = 'user-daily'"))
            for user in users:
                total = sum(tokens for who, tokens in spent if who == user)
                assert total > 0
                assert USER_QUOTA - available[user] == total, (user, available[user], total)
            history = dict(pg_rows(schema, "SELECT user_id, COUNT(*) FROM "
                                           "lcore_quota_token_usage GROUP BY user_id"))
            assert all(history[user] == 12 for user in users), history

            # Three schedulers, one reset per period: the epoch counts the periods exactly.
            def advanced() -> Any:
                [(epoch, reset_at)] = pg_rows(schema, "SELECT epoch, reset_at FROM "
                                                      "lcore_quota_limit WHERE limiter = 'tick'")
                return (epoch, reset_at) if epoch >= epoch0 + 2 else None

            epoch, reset_at = wait_for(advanced, 4 * TICK_S, what="two quota periods")
            assert (reset_at - reset0).total_seconds() == TICK_S * (epoch - epoch0)
    finally:
        for replica in replicas:
            replica.stop()
