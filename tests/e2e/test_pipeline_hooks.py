"""The pipeline calls quota and observer hooks: consume after success only, status in replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core import QueryCompleted, QuotaExceeded, Usage, hookimpl
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

    @hookimpl
    async def lcore_quota_check(self, auth: Any) -> None:
        if self.refuse or self.budget <= 0:
            raise QuotaExceeded("The quota has been exceeded", f"user {auth.user_id} has none")

    @hookimpl
    async def lcore_quota_consume(self, usage: Usage) -> None:
        self.consumed.append(usage)
        self.budget -= usage.total

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
    spent = len(quota.consumed)
    assert (await lcore.query("fail for quota")).status_code >= 500
    status, events = await lcore.stream("fail for quota")
    assert status == 200
    assert events[-1]["event"] == "error"
    assert len(quota.consumed) == spent
    assert quota.events[-1].error is not None


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
