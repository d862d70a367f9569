"""The pipeline calls quota and observer hooks: consume after success only, status in replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core import QueryCompleted, QuotaExceeded, QuotaTicket, Usage, hookimpl
from lcore_core.app import create_app
from lcore_core.plugins import load_plugins

from .support import Lcore, lcore_config, started


class RecordingQuota:
    """A third-party style quota plugin: a budget per user, spent after successful calls."""

    def __init__(self) -> None:
        self.budget = 10_000
        self.consumed: list[Usage] = []
        self.events: list[QueryCompleted] = []
        self.refuse = False
        self.reserved = 0
        self.released = 0
        self.hold: asyncio.Event | None = None  # while set, the check waits for it

    @hookimpl
    async def lcore_quota_check(self, auth: Any, ticket: QuotaTicket) -> None:
        if self.hold is not None:
            await asyncio.wait_for(self.hold.wait(), 10)
        if self.refuse or self.budget <= 0:
            raise QuotaExceeded("The quota has been exceeded", f"user {auth.user_id} has none")
        ticket.reservations["recording"] = 100
        self.reserved += 1

    @hookimpl
    async def lcore_quota_consume(self, usage: Usage, ticket: QuotaTicket) -> None:
        assert ticket.reservations["recording"] == 100
        self.consumed.append(usage)
        self.budget -= usage.total

    @hookimpl
    async def lcore_quota_release(self, ticket: QuotaTicket) -> None:
        assert ticket.reservations.pop("recording") == 100
        self.released += 1

    @hookimpl
    def lcore_quota_status(self) -> dict[str, int]:
        return {"test_limiter": self.budget}

    @hookimpl
    def lcore_query_completed(self, event: QueryCompleted) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
async def hooked(tmp_path_factory: pytest.TempPathFactory,
                 llama_stack_server: Any) -> AsyncIterator[tuple[Lcore, RecordingQuota]]:
    quota = RecordingQuota()
    workdir: Path = tmp_path_factory.mktemp("hooks")
    app = create_app(lcore_config(workdir, "server", llama_stack_server.url),
                     plugins=load_plugins(entrypoints=False, extra=[quota]))
    async with started(app) as test_app:
        yield Lcore(app, test_app.test_client(), "server", workdir), quota


async def test_success_consumes_exactly_the_usage(hooked: Any, llm: Any) -> None:
    lcore, quota = hooked
    before = quota.budget
    body = await (await lcore.query("count my tokens", generate_topic_summary=False)).get_json()
    usage = quota.consumed[-1]
    assert (usage.input_tokens, usage.output_tokens) == (body["input_tokens"],
                                                         body["output_tokens"])
    assert usage.model == "scripted-llm" and usage.provider == "openai"
    assert quota.budget == before - usage.total
    assert body["available_quotas"] == {"test_limiter": quota.budget}
    event = quota.events[-1]
    assert event.error is None and event.input_tokens == body["input_tokens"]
    assert event.conversation_id == body["conversation_id"]


async def test_failure_consumes_nothing_but_is_observed(hooked: Any, llm: Any) -> None:
    lcore, quota = hooked
    llm.script("fail for quota", status=500)
    spent, released = len(quota.consumed), quota.released
    assert (await lcore.query("fail for quota")).status_code >= 500
    status, events = await lcore.stream("fail for quota")
    assert status == 200
    assert events[-1]["event"] == "error"
    assert len(quota.consumed) == spent
    assert quota.released == released + 2
    assert quota.events[-1].error is not None


async def test_unknown_model_releases_the_reservation(hooked: Any, llm: Any) -> None:
    lcore, quota = hooked
    released = quota.released
    response = await lcore.query("x", model="missing", provider="openai")
    assert response.status_code == 404
    assert quota.released == released + 1


async def test_client_disconnect_releases_and_consumes_nothing(hooked: Any, llm: Any) -> None:
    lcore, quota = hooked
    spent, released = len(quota.consumed), quota.released
    llm.script("slow hooked stream", text=" ".join(f"t{i}" for i in range(20)), chunk_delay=0.5)
    async with lcore.client.request("/v2/streaming_query", method="POST",
                                    headers={"Content-Type": "application/json"}) as conn:
        await conn.send(b'{"query": "slow hooked stream"}')
        await conn.send_complete()
        received = b""
        while b"token" not in received:
            received += await asyncio.wait_for(conn.receive(), 30)
        await conn.disconnect()
    for _ in range(50):
        if quota.released > released:
            break
        await asyncio.sleep(0.1)
    assert quota.released == released + 1
    assert len(quota.consumed) == spent


async def test_streaming_end_carries_quota(hooked: Any, llm: Any) -> None:
    lcore, quota = hooked
    status, events = await lcore.stream("stream my tokens", generate_topic_summary=False)
    assert status == 200
    end = events[-1]["data"]
    assert end["available_quotas"] == {"test_limiter": quota.budget}
    assert quota.consumed[-1].output_tokens == end["output_tokens"]


async def test_quota_exceeded_is_429_before_the_llm(hooked: Any, llm: Any) -> None:
    lcore, quota = hooked
    quota.refuse = True
    try:
        response = await lcore.query("refused question")
        assert response.status_code == 429
        assert (await response.get_json())["detail"]["response"] == "The quota has been exceeded"
        assert (await lcore.client.post("/v2/streaming_query", json={"query": "refused"})
                ).status_code == 429
        assert not any("refused question" in r.text for r in llm.chat_requests)
    finally:
        quota.refuse = False


async def test_a_follow_up_turn_reads_its_conversation_during_the_quota_check(
        hooked: Any, llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    lcore, quota = hooked
    first = await (await lcore.query("first turn", generate_topic_summary=False)).get_json()
    userdb = lcore.runtime.userdb
    read = userdb.get
    quota.hold = asyncio.Event()

    async def get(conversation_id: str) -> Any:
        assert quota.hold is not None
        quota.hold.set()  # the check, waiting, goes on only once the read has begun
        return await read(conversation_id)

    monkeypatch.setattr(userdb, "get", get)
    try:
        response = await lcore.query("second turn", conversation_id=first["conversation_id"],
                                     generate_topic_summary=False)
        assert response.status_code == 200  # one after the other, the check times out: 500
        assert (await response.get_json())["conversation_id"] == first["conversation_id"]
    finally:
        quota.hold = None


async def test_a_refused_follow_up_is_429_even_for_an_unknown_conversation(
        hooked: Any, llm: Any) -> None:
    lcore, quota = hooked
    quota.refuse = True
    try:
        response = await lcore.query("refused follow-up", conversation_id="conv_" + "0" * 48)
        assert response.status_code == 429  # the quota answers first, as before the overlap
    finally:
        quota.refuse = False
    response = await lcore.query("unknown follow-up", conversation_id="conv_" + "0" * 48)
    assert response.status_code == 404
