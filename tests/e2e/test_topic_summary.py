"""Topic summaries against the real Llama Stack: bounded, counted, charged, and still shown.

LCore talks to Llama Stack through a TcpProxy that counts the calls in flight per path: the
answers are Responses calls, the titles chat completions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lcore_quota.plugin
import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llm import TITLES_MARKER, count_words, message_text
from lcore_core.testing.tcp_proxy import TcpProxy

from .support import lcore_config, started

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
USER = "00000000-0000-0000-0000-000"  # the noop module's user


@pytest.fixture
async def proxy(llama_stack_server: Any) -> AsyncIterator[TcpProxy]:
    front = TcpProxy("127.0.0.1", urlsplit(llama_stack_server.url).port or 80)
    front.count_http = True
    await front.start()
    yield front
    await front.close()


@pytest.fixture
def lcore_app(tmp_path: Path, proxy: TcpProxy) -> Callable[..., Any]:
    def make(topic_summary: dict[str, Any] | None = None, **overrides: Any) -> Any:
        path = lcore_config(tmp_path / "lcore", "server", f"http://127.0.0.1:{proxy.port}",
                            topic_summary=topic_summary or {}, **overrides)
        return create_app(path, plugins=load_plugins(entrypoints=False,
                                                     extra=[lcore_quota.plugin]))
    return make


def slow_titles(llm: Any, seconds: float) -> None:
    llm.script(lambda messages: TITLES_MARKER in str(messages), delay=seconds,
               text=lambda messages: "1. Slow title")


async def ask(client: Any, question: str) -> dict[str, Any]:
    response = await client.post("/v2/query", json={"query": question})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return await response.get_json()  # type: ignore[no-any-return]


def skip_lines(caplog: pytest.LogCaptureFixture, reason: str) -> int:
    """The `topic summary skipped` log lines' count of titles skipped for `reason`."""
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    return sum(int(m["count"]) for m in logged
               if m.get("event") == "topic summary skipped" and m.get("reason") == reason)


def skipped(app: Any, reason: str) -> float:
    return app.runtime.registry.get_sample_value(
        "ls_background_llm_skipped_total", {"purpose": "topic_summary", "reason": reason}) or 0


async def topics(client: Any) -> dict[str, str | None]:
    listing = await (await client.get("/v2/conversations")).get_json()
    return {c["conversation_id"]: c["topic_summary"] for c in listing["conversations"]}


async def test_summaries_appear_in_conversations_from_one_batched_call(
        lcore_app: Any, llm: Any, proxy: TcpProxy) -> None:
    app = lcore_app({"batch_window_ms": 3000})
    async with started(app) as test_app:
        client = test_app.test_client()
        questions = ["how do pods restart", "what is a route", "why is my build red"]
        answers = await asyncio.gather(*(ask(client, q) for q in questions))
        await app.runtime.drain()
        shown = await topics(client)
        assert [shown[a["conversation_id"]] for a in answers] == [
            f"Title: {q}" for q in questions]
        for a, q in zip(answers, questions, strict=True):
            meta = await app.runtime.userdb.get(a["conversation_id"])
            assert meta["topic_summary"] == f"Title: {q}"
            (info,) = [c for c in await app.runtime.cache.list(USER)
                       if c.conversation_id == a["conversation_id"]]
            assert info.topic_summary == f"Title: {q}"
    # Three answers, one title call for all three (not stored: no Responses call for titles).
    assert (proxy.requests[RESPONSES], proxy.requests[CHAT]) == (3, 1)
    (asked,) = llm.titles_requests
    assert asked.body["max_tokens"] == 3 * 24


async def test_the_cap_holds_under_a_burst(lcore_app: Any, llm: Any, proxy: TcpProxy) -> None:
    slow_titles(llm, 0.5)
    app = lcore_app({"batch_window_ms": 0, "batch_size": 1, "max_concurrent_calls": 2})
    async with started(app) as test_app:
        client = test_app.test_client()
        answers = await asyncio.gather(*(ask(client, f"burst question {n}") for n in range(10)))
        await app.runtime.drain(timeout=60)
        shown = await topics(client)
    assert proxy.requests[CHAT] == 10
    assert proxy.peak[CHAT] <= 2
    assert [shown[a["conversation_id"]] for a in answers] == ["Slow title"] * 10


async def test_a_full_queue_skips_a_summary_with_a_log_line_and_a_count(
        lcore_app: Any, llm: Any, proxy: TcpProxy, caplog: pytest.LogCaptureFixture) -> None:
    slow_titles(llm, 3.0)
    app = lcore_app({"batch_window_ms": 0, "batch_size": 1, "max_concurrent_calls": 1,
                     "max_queued": 1})
    caplog.set_level(logging.WARNING, logger="lcore.summaries")
    async with started(app) as test_app:
        client = test_app.test_client()
        answers = await asyncio.gather(*(ask(client, f"crowded {n}") for n in range(5)))
        await app.runtime.drain(timeout=60)
        shown = await topics(client)
        count = skipped(app, "queue_full")
    titled = [a for a in answers if shown[a["conversation_id"]] == "Slow title"]
    assert count >= 1
    assert len(titled) + count == 5
    assert proxy.requests[CHAT] == len(titled)
    assert skip_lines(caplog, "queue_full") == count


@pytest.mark.parametrize("charge", [True, False])
async def test_the_summary_is_charged_to_the_callers_quota(lcore_app: Any, llm: Any,
                                                           tmp_path: Path, charge: bool) -> None:
    quota = {"sqlite": {"db_path": str(tmp_path / "quota.db")},
             "limiters": [{"name": "daily", "type": "user_limiter", "initial_quota": 100_000,
                           "quota_increase": 0, "period": "1 day"}]}
    app = lcore_app({"batch_window_ms": 0, "charge_quota": charge}, quota_handlers=quota)
    async with started(app) as test_app:
        client = test_app.test_client()
        answer = await ask(client, "charge me for the title")
        await app.runtime.drain()
        left = (await app.runtime.state["lcore-quota"].status(USER))["daily"]
        sent_tokens = app.runtime.registry.get_sample_value(
            "ls_llm_token_sent_total", {"provider": "openai", "model": "scripted-llm",
                                        "endpoint": "topic_summary"})
    (asked,) = llm.titles_requests
    sent = sum(count_words(message_text(m)) for m in asked.messages)
    received = count_words("1. Title: charge me for the title")
    title = sent + received if charge else 0
    assert left == 100_000 - answer["input_tokens"] - answer["output_tokens"] - title
    assert sent_tokens == sent


async def test_a_rename_before_the_summary_wins(lcore_app: Any, llm: Any) -> None:
    slow_titles(llm, 1.0)
    app = lcore_app({"batch_window_ms": 0})
    async with started(app) as test_app:
        client = test_app.test_client()
        conversation_id = (await ask(client, "rename me quickly"))["conversation_id"]
        put = await client.put(f"/v2/conversations/{conversation_id}",
                               json={"topic_summary": "My own name"})
        assert put.status_code == 200
        await app.runtime.drain()
        assert len(llm.titles_requests) == 1  # the summary did come back, late
        assert (await topics(client))[conversation_id] == "My own name"
        assert (await app.runtime.userdb.get(conversation_id))["topic_summary"] == "My own name"
