"""lcore-quota in the real pipeline: a real Llama Stack server driving the scripted LLM.

The plugin is loaded from its entry point, as an installed distribution is for a user.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from tests.e2e.support import lcore_config, parse_sse, started

from .conftest import PG, own_schema

pytestmark = pytest.mark.e2e

RESERVE = 50


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def quota_storage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[dict[str, Any]]:
    """The quota database: a SQLite file, or a PostgreSQL schema of this module alone."""
    if request.param == "sqlite":
        yield {"sqlite": {"db_path": str(tmp_path_factory.mktemp("quota-e2e") / "quota.db")}}
        return
    with own_schema() as namespace:
        yield {"postgres": {**PG, "namespace": namespace, "max_connections": 8}}


@pytest.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any,
              quota_storage: dict[str, Any]) -> AsyncIterator[Any]:
    workdir: Path = tmp_path_factory.mktemp("quota-e2e")
    quota = {**quota_storage,
             "limiters": [{"name": "daily", "type": "user_limiter", "initial_quota": 2000,
                           "quota_increase": 0, "period": "1 day"},
                          {"name": "cluster", "type": "cluster_limiter",
                           "initial_quota": 1_000_000, "quota_increase": 0,
                           "period": "1 month"}],
             "enable_token_history": True, "reservation_tokens": RESERVE,
             "reservation_chars_per_token": 0}
    plugins = load_plugins()
    assert plugins.distribution_of("quota") == "lcore-quota"
    app = create_app(lcore_config(workdir, "server", llama_stack_server.url,
                                  quota_handlers=quota), plugins=plugins)
    async with started(app) as test_app:
        app.client = test_app.test_client()  # type: ignore[attr-defined]
        yield app


def quota_of(app: Any) -> Any:
    return app.runtime.state["lcore-quota"]


async def query(app: Any, user: str, text: str) -> Any:
    return await app.client.post(f"/v2/query?user_id={user}",
                                 json={"query": text, "generate_topic_summary": False})


async def stream(app: Any, user: str, text: str) -> tuple[int, list[dict[str, Any]]]:
    response = await app.client.post(f"/v2/streaming_query?user_id={user}",
                                     json={"query": text, "generate_topic_summary": False})
    return response.status_code, parse_sse(await response.get_data(as_text=True))


async def test_query_consumes_its_tokens_and_reports_what_is_left(app: Any, llm: Any) -> None:
    response = await query(app, "e2e-ann", "how many tokens does this take")
    assert response.status_code == 200, await response.get_json()
    body = await response.get_json()
    spent = body["input_tokens"] + body["output_tokens"]
    assert body["output_tokens"] > 0 and spent > 0
    assert body["available_quotas"]["daily"] == 2000 - spent
    assert await quota_of(app).status("e2e-ann") == body["available_quotas"]
    assert response.headers["X-Quota-Remaining"].startswith(f"daily={2000 - spent}, ")
    [usage] = await quota_of(app).store.usage_totals("e2e-ann")
    assert (usage["provider"], usage["model"]) == ("openai", "scripted-llm")
    assert (usage["input_tokens"], usage["output_tokens"], usage["calls"]) == (
        body["input_tokens"], body["output_tokens"], 1)


async def test_streaming_end_event_carries_the_quotas(app: Any, llm: Any) -> None:
    status, events = await stream(app, "e2e-sam", "stream a few words please")
    assert status == 200
    end = events[-1]
    assert end["event"] == "end", events
    spent = end["data"]["input_tokens"] + end["data"]["output_tokens"]
    assert spent > 0
    assert end["data"]["available_quotas"]["daily"] == 2000 - spent
    assert await quota_of(app).status("e2e-sam") == end["data"]["available_quotas"]


async def test_failed_llm_call_consumes_nothing(app: Any, llm: Any) -> None:
    quota = quota_of(app)
    before = await quota.status("e2e-fay")
    cluster_before = before["cluster"]
    llm.script("quota failing call", status=500)
    response = await query(app, "e2e-fay", "quota failing call")
    assert response.status_code >= 500
    status, events = await stream(app, "e2e-fay", "quota failing call")
    assert status == 200 and events[-1]["event"] == "error"
    after = await quota.status("e2e-fay")
    assert after["daily"] == before["daily"] == 2000
    # Other users' calls may run on the cluster limiter meanwhile; here nobody else does.
    assert after["cluster"] == cluster_before
    assert await quota.store.usage_totals("e2e-fay") == []


async def test_exhausted_quota_is_a_429_before_any_llm_call(app: Any, llm: Any) -> None:
    quota = quota_of(app)
    await quota.store.set_available(quota.limiter("daily"), "e2e-max", RESERVE - 1,
                                    quota.clock())
    response = await query(app, "e2e-max", "too expensive")
    assert response.status_code == 429
    detail = (await response.get_json())["detail"]
    assert (detail["limiter"], detail["available"], detail["needed"]) == (
        "daily", RESERVE - 1, RESERVE)
    assert detail["resets_at"].endswith("T00:00:00Z")
    status, _ = await stream(app, "e2e-max", "too expensive")
    assert status == 429
    assert not [r for r in llm.chat_requests if "too expensive" in r.text]
    assert await quota.status("e2e-max") == {"daily": RESERVE - 1,
                                             "cluster": (await quota.status("x"))["cluster"]}


async def test_cut_stream_consumes_nothing(app: Any, llm: Any) -> None:
    quota = quota_of(app)
    llm.script("slow quota stream", text=" ".join(f"w{i}" for i in range(40)), chunk_delay=0.2)
    async with app.client.request("/v2/streaming_query?user_id=e2e-cut", method="POST",
                                  headers={"Content-Type": "application/json"}) as conn:
        await conn.send(b'{"query": "slow quota stream", "generate_topic_summary": false}')
        await conn.send_complete()
        received = b""
        while b"token" not in received:
            received += await asyncio.wait_for(conn.receive(), 30)
        assert (await quota.status("e2e-cut"))["daily"] == 2000 - RESERVE  # held meanwhile
        await conn.disconnect()
    # The release runs as the stream's generator closes: wait for it, not for a fixed time.
    for _ in range(300):
        if (await quota.status("e2e-cut"))["daily"] == 2000:
            break
        await asyncio.sleep(0.01)
    assert await quota.status("e2e-cut") == {"daily": 2000,
                                             "cluster": (await quota.status("x"))["cluster"]}
    assert await quota.store.usage_totals("e2e-cut") == []


async def test_interrupted_stream_consumes_what_it_used(app: Any, llm: Any) -> None:
    quota = quota_of(app)
    llm.script("interrupted quota stream", text=" ".join(f"w{i}" for i in range(40)),
               chunk_delay=0.2)
    async with app.client.request("/v2/streaming_query?user_id=e2e-stop", method="POST",
                                  headers={"Content-Type": "application/json"}) as conn:
        await conn.send(b'{"query": "interrupted quota stream", '
                        b'"generate_topic_summary": false}')
        await conn.send_complete()
        received = b""
        while b'"token"' not in received:
            received += await asyncio.wait_for(conn.receive(), 30)
        request_id = parse_sse(received.decode())[0]["data"]["request_id"]
        stopped = await app.client.post("/v1/streaming_query/interrupt?user_id=e2e-stop",
                                        json={"request_id": request_id})
        assert stopped.status_code == 200
        while b'"interrupted"' not in received:
            received += await asyncio.wait_for(conn.receive(), 30)
    # Llama Stack reported no usage for the cut call: LCore's estimate of it is charged.
    [usage] = await quota.store.usage_totals("e2e-stop")
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0 and usage["calls"] == 1
    spent = usage["input_tokens"] + usage["output_tokens"]
    assert (await quota.status("e2e-stop"))["daily"] == 2000 - spent


async def quota_samples(app: Any) -> dict[tuple[str, str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = await app.client.get("/metrics")
    assert response.status_code == 200
    text = await response.get_data(as_text=True)
    return {(s.name, s.labels.get("limiter", ""), s.labels.get("subject_type", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("ls_quota_")}


async def test_metrics_count_consumed_tokens_and_refusals(app: Any, llm: Any) -> None:
    before = await quota_samples(app)
    response = await query(app, "e2e-met", "count my quota tokens")
    assert response.status_code == 200
    body = await response.get_json()
    spent = body["input_tokens"] + body["output_tokens"]
    quota = quota_of(app)
    await quota.store.set_available(quota.limiter("daily"), "e2e-met", 0, quota.clock())
    assert (await query(app, "e2e-met", "refused")).status_code == 429
    after = await quota_samples(app)

    def delta(key: tuple[str, str, str]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta(("ls_quota_consumed_tokens_total", "daily", "user")) == spent
    assert delta(("ls_quota_consumed_tokens_total", "cluster", "cluster")) == spent
    assert delta(("ls_quota_refused_requests_total", "daily", "")) == 1


async def test_estimated_tokens_are_charged_when_the_provider_reports_none(
        app: Any, llm: Any) -> None:
    """A provider without usage (llama.cpp's stream): quota is charged LCore's count, not 0."""
    llm.script("no usage from this model", text="Pods group containers that share a network.",
               usage=False)
    before = (await quota_of(app).status("e2e-est"))["daily"]
    response = await query(app, "e2e-est", "no usage from this model")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["tokens_estimated"] is True and body["output_tokens"] > 0
    spent = body["input_tokens"] + body["output_tokens"]
    assert (await quota_of(app).status("e2e-est"))["daily"] == before - spent
