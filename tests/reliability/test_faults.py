"""Faults injected into real backends while LCore serves: PostgreSQL, Llama Stack, MCP, JWKS."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lcore_cache_postgres.plugin
import lcore_quota.plugin
import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.mcp_server import MCPTestServer
from tests.e2e.support import started

from .support import OwnPostgres, parse_sse, pg_rows, postgres, write_config

RESERVE = 1000  # tokens a query reserves (quota_handlers.reservation_tokens)
USER_QUOTA = 10_000_000
QUERY = {"generate_topic_summary": False, "no_tools": True}


def quota_section(storage: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**storage, "enable_token_history": True, "reservation_tokens": RESERVE,
            "reservation_chars_per_token": 0,
            "scheduler": {"period": 1, "database_reconnection_count": 1},
            "limiters": [
                {"name": "user-daily", "type": "user_limiter", "initial_quota": USER_QUOTA,
                 "quota_increase": 0, "period": "1 day"},
                # resets every 2 s: shows the scheduler at work
                {"name": "cluster-tick", "type": "cluster_limiter",
                 "initial_quota": 10 * USER_QUOTA, "quota_increase": 0,
                 "period": "2 seconds"}],
            **extra}


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of this test alone, which it stops and restarts for real."""
    server = OwnPostgres()
    try:
        yield server.create()
    finally:
        server.destroy()


def _is_error_json(status: int, body: Any) -> bool:
    detail = body.get("detail") if isinstance(body, dict) else None
    return (status in (500, 503) and isinstance(detail, dict)
            and isinstance(detail.get("response"), str) and isinstance(detail.get("cause"), str)
            and "Traceback" not in json.dumps(body))


async def test_postgres_outage_under_load(own_pg: OwnPostgres, tmp_path: Path,
                                          llama_stack_server: Any, llm: Any) -> None:
    """Cache, user DB and quota on PostgreSQL; PostgreSQL crashes under a query load and is
    started again (the real server: `pg_ctl stop -m immediate`, then `pg_ctl start`)."""
    schema = "lcore_fault"
    pg = postgres(schema, own_pg.port, max_connections=8)
    config = write_config(
        tmp_path / "lcore.yaml", llama_stack_server.url,
        database={"postgres": postgres(schema, own_pg.port)},
        conversation_cache={"type": "postgres", "postgres": pg},
        quota_handlers=quota_section({"postgres": pg}))
    app = create_app(config, plugins=load_plugins(entrypoints=False, extra=[
        lcore_quota.plugin, lcore_cache_postgres.plugin]))
    results: list[tuple[str, float, int, Any]] = []  # (user, sent at, status, body)
    finished: list[float] = []  # when each of `results` was answered
    outage: dict[str, float] = {}
    stop = asyncio.Event()

    async with started(app) as test_app:
        client = test_app.test_client()
        scheduler = app.runtime.state["lcore-quota.scheduler"]

        async def worker(n: int) -> None:
            user = f"user-{n}"
            i = 0
            while not stop.is_set():
                i += 1
                sent = time.monotonic()
                response = await client.post(f"/v2/query?user_id={user}",
                                             json={"query": f"load {n}.{i}", **QUERY})
                body = await response.get_json()
                results.append((user, sent, response.status_code, body))
                finished.append(time.monotonic())

        def count(since: float = 0.0, until: float = float("inf"), ok: bool = True) -> int:
            return sum(1 for _, sent, status, _ in results
                       if since <= sent < until and (status == 200) == ok)

        async def until(condition: Any, timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.05)

        # One query first: Llama Stack creates its tables on first use, racily.
        warm = await client.post("/v2/query?user_id=warm-up", json={"query": "warm", **QUERY})
        assert warm.status_code == 200, await warm.get_json()
        workers = [asyncio.create_task(worker(n)) for n in range(4)]
        try:
            await until(lambda: count() >= 6, 60, "answers before the outage")
            failures_before = scheduler.failures
            outage["cut"] = time.monotonic()
            await asyncio.to_thread(own_pg.stop)
            # Down: wait for failed queries and for the scheduler to have met the outage.
            await until(lambda: count(since=outage["cut"] + 0.5, ok=False) >= 8
                        and scheduler.failures > failures_before, 30, "failures while down")
            listing = await client.get("/v2/conversations?user_id=user-0")
            assert listing.status_code == 500
            assert _is_error_json(500, await listing.get_json())
            ready = await client.get("/readiness")
            assert ready.status_code == 503
            outage["back"] = time.monotonic()
            back_wall = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            await asyncio.to_thread(own_pg.start)  # same port; nobody restarts LCore
            await until(lambda: count(since=outage["back"]) >= 6, 60,
                        "answers after the recovery")
        finally:
            stop.set()
            await asyncio.gather(*workers)

        # Every request made while PostgreSQL was down failed cleanly with a JSON error.
        down = [(s, b) for (_, sent, s, b), done in zip(results, finished, strict=True)
                if outage["cut"] + 0.5 <= sent and done < outage["back"]]
        assert down and all(_is_error_json(s, b) for s, b in down), [
            (s, b) for s, b in down if not _is_error_json(s, b)][:3]
        assert all(s == 200 or _is_error_json(s, b) for _, _, s, b in results)
        assert (await client.get("/readiness")).status_code == 200
        # The scheduler resumes by itself: the 2-second cluster limiter resets again.
        deadline = time.monotonic() + 15
        while True:
            [(reset_at,)] = pg_rows(schema, "SELECT reset_at FROM lcore_quota_limit "
                                            "WHERE limiter = 'cluster-tick'", port=own_pg.port)
            if reset_at > back_wall:
                break
            assert time.monotonic() < deadline, "the quota scheduler did not resume"
            await asyncio.sleep(0.2)
        answered = [(u, b) for u, _, s, b in results if s == 200]
        for user, body in answered[-3:]:  # readable after the recovery
            got = await client.get(f"/v2/conversations/{body['conversation_id']}?user_id={user}")
            assert got.status_code == 200, await got.get_json()

    # No half-written conversation: user DB rows are whole turns, cache counts match entries.
    turns = {cid: (user, count) for cid, user, count in pg_rows(
        schema, "SELECT id, user_id, message_count FROM lcore_user_conversation",
        port=own_pg.port)}
    for user, body in answered:
        assert turns.get(body["conversation_id"]) == (user, 1)
    cached = pg_rows(schema, "SELECT c.conversation_id, c.message_count, COUNT(e.id), "
                             "MIN(LENGTH(e.response)) FROM lcore_cache_conversation c "
                             "LEFT JOIN lcore_cache_entry e USING (user_id, conversation_id) "
                             "GROUP BY c.conversation_id, c.message_count", port=own_pg.port)
    assert cached
    for cid, message_count, entries, shortest in cached:
        assert message_count == entries == 1 and shortest > 0, cid
        assert cid in turns  # the cache row follows the user DB row, never alone
    # No half-written quota: what each user lost is their recorded usage plus whole
    # reservations of requests whose settlement met the outage (never a fraction of one).
    lost = dict(pg_rows(schema, f"SELECT subject_id, {USER_QUOTA} - available "
                                "FROM lcore_quota_limit WHERE limiter = 'user-daily'",
                            port=own_pg.port))
    used = dict(pg_rows(schema, "SELECT user_id, SUM(input_tokens + output_tokens) "
                                "FROM lcore_quota_token_usage GROUP BY user_id",
                            port=own_pg.port))
    for user in {u for u, *_ in results}:
        stuck, rest = divmod(lost.get(user, 0) - used.get(user, 0), RESERVE)
        failed = sum(1 for u, _, s, _ in results if u == user and s != 200)
        assert rest == 0 and 0 <= stuck <= failed, (user, lost.get(user), used.get(user))
        answered_tokens = sum(b["input_tokens"] + b["output_tokens"]
                              for u, b in answered if u == user)
        assert used.get(user, 0) >= answered_tokens - stuck * RESERVE


async def test_llama_stack_killed_mid_stream(own_stack: Any, llm: Any, tmp_path: Path) -> None:
    llm.script("tell a long story", text=" ".join(f"word{i}" for i in range(80)),
               chunk_delay=0.05)
    config = write_config(tmp_path / "lcore.yaml", own_stack.url,
                          quota_handlers=quota_section(
                              {"sqlite": {"db_path": str(tmp_path / "quota.db")}}))
    app = create_app(config, plugins=load_plugins(entrypoints=False,
                                                  extra=[lcore_quota.plugin]))
    async with started(app) as test_app:
        client = test_app.test_client()
        quota = app.runtime.state["lcore-quota"]
        before = await quota.status("alice")
        body = json.dumps({"query": "tell a long story", **QUERY}).encode()
        async with client.request("/v2/streaming_query?user_id=alice", method="POST",
                                  headers={"Content-Type": "application/json"}) as connection:
            await connection.send(body)
            await connection.send_complete()
            received = b""
            while b'"event": "token"' not in received:
                received += await asyncio.wait_for(connection.receive(), 30)
            own_stack.kill()  # SIGKILL while the answer streams
            while b'"event": "error"' not in received and b'"event": "end"' not in received:
                received += await asyncio.wait_for(connection.receive(), 30)
        events = parse_sse(received.decode())
        kinds = [e["event"] for e in events]
        assert kinds[0] == "start" and "token" in kinds
        assert kinds[-1] == "error", kinds
        assert "end" not in kinds and "turn_complete" not in kinds
        error = events[-1]["data"]
        assert error["status_code"] == 503, error
        assert "Traceback" not in json.dumps(error)
        conversation_id = events[0]["data"]["conversation_id"]
        # Quota untouched, no half turn anywhere.
        assert await quota.status("alice") == before
        assert await app.runtime.userdb.get(conversation_id) is None
        assert await app.runtime.cache.get("alice", conversation_id) == []
        # The next request fails cleanly instead of hanging.
        response = await client.post("/v2/query?user_id=alice", json={"query": "hi", **QUERY})
        assert response.status_code == 503
        assert _is_error_json(503, await response.get_json())


async def test_mcp_server_down_leaves_other_tools_working(llama_stack_server: Any, llm: Any,
                                                          mcp_test_server: MCPTestServer,
                                                          tmp_path: Path) -> None:
    """A dead MCP server is left out and the live one's tool still answers.

    Two ways to learn of it: a probe (readiness, or the one a query makes when the last probe
    is old) before the call; or, when it died since, Llama Stack refusing the call, after which
    LCore probes, leaves it out and retries (for a stream, before the client saw any token).
    """
    def clock(zone: str) -> str:
        return f"12:00 in {zone}"

    def headline(topic: str) -> str:
        return f"Nothing new about {topic}"

    def doomed_server(port: int = 0) -> MCPTestServer:
        return MCPTestServer(port=port, weather=False, tools={"get_time": clock}).start()

    def late_server(port: int = 0) -> MCPTestServer:
        return MCPTestServer(port=port, weather=False, tools={"get_news": headline}).start()

    doomed, late = doomed_server(), late_server()
    servers = [{"name": "doomed", "url": doomed.url}, {"name": "late", "url": late.url},
               {"name": "weather", "url": mcp_test_server.url}]
    config = write_config(tmp_path / "lcore.yaml", llama_stack_server.url, mcp_servers=servers)
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    llm.script("weather in rome", tool_call=("get_weather", {"city": "Rome"}),
               then="Weather: {tool_output}")
    ask = {"query": "weather in rome", "generate_topic_summary": False}

    async def answered(response: Any, *, unavailable: str) -> None:
        body = await response.get_json()
        assert response.status_code == 200, body
        assert "Weather:" in body["response"] and "Rome" in body["response"], body
        # only the live server's tools were listed (the dead ones were not offered), then called
        assert [c["name"] for c in body["tool_calls"]] == ["mcp_list_tools", "get_weather"], \
            body
        assert response.headers["X-LCore-MCP-Unavailable"] == unavailable

    try:
        async with started(app) as test_app:
            client = test_app.test_client()
            warm = await client.post("/v2/query", json=ask)
            assert warm.status_code == 200, await warm.get_json()
            assert "X-LCore-MCP-Unavailable" not in warm.headers
            # 1. Died right after the last probe: the stream's call fails, LCore probes, leaves
            #    it out and reopens; the client only sees a normal stream.
            doomed.stop()
            streamed = await client.post("/v2/streaming_query", json=ask)
            assert streamed.status_code == 200
            events = parse_sse((await streamed.get_data()).decode())
            kinds = [e["event"] for e in events]
            assert kinds[-1] == "end", events
            assert "error" not in kinds and "tool_result" in kinds, kinds
            # 2. The same for a plain query.
            late.stop()
            response = await client.post("/v2/query", json=ask)
            await answered(response, unavailable="doomed, late")
            # 3. Known dead ones are not offered again (no failed call first): readiness and
            #    the tools list report them, queries name them.
            ready = await client.get("/readiness")
            providers = {p["provider_id"]: p for p in (await ready.get_json())["providers"]}
            assert ready.status_code == 503
            assert providers["mcp:doomed"]["status"] == "error"
            assert providers["mcp:late"]["status"] == "error"
            assert providers["mcp:weather"]["status"] == "ok"
            tools = await client.get("/v1/tools")
            listed = json.dumps(await tools.get_json())
            assert tools.status_code == 200, listed
            assert "get_weather" in listed
            response = await client.post("/v2/query", json=ask)
            await answered(response, unavailable="doomed, late")
            # 4. Back up: offered again once a probe (here readiness) finds it answering.
            doomed, late = doomed_server(doomed.port), late_server(late.port)
            ready = await client.get("/readiness")
            assert ready.status_code == 200, await ready.get_json()
            again = await client.post("/v2/query", json=ask)
            assert again.status_code == 200
            assert "X-LCore-MCP-Unavailable" not in again.headers
    finally:
        doomed.stop()
        late.stop()
