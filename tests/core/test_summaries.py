"""Topic summaries (lcore_core.summaries): batching, splitting, bounds, charging, renames.

The app talks to the scripted LLM directly (it answers chat completions as Llama Stack would),
through a TcpProxy that counts the calls in flight.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core import hookimpl
from lcore_core.auth import AuthTuple
from lcore_core.cache import CacheEntry
from lcore_core.config import load_config
from lcore_core.errors import ConfigError
from lcore_core.plugins import load_plugins
from lcore_core.summaries import INSTRUCTION, Item, prompt, shares, split_titles
from lcore_core.testing import ScriptedLLM
from lcore_core.testing.llm import NO_TITLE_MARKER, TITLES_MARKER, count_words, titles_reply
from lcore_core.testing.tcp_proxy import TcpProxy

CHAT = "/v1/chat/completions"
ALICE = AuthTuple("alice", "alice")


def test_the_instruction_is_the_one_the_scripted_llm_knows() -> None:
    assert INSTRUCTION.startswith(TITLES_MARKER)


def test_prompt_numbers_the_questions_one_line_each() -> None:
    assert prompt(["how do\nI  scale", "why"]) == "1. how do I scale\n2. why"


def test_split_titles_puts_each_numbered_line_in_its_place() -> None:
    reply = 'Here you go:\n2) "Second topic".\n1. First topic\n7. out of range\n1. again'
    assert split_titles(reply, 3) == ["First topic", "Second topic", None]


def test_split_titles_takes_a_bare_line_for_one_question() -> None:
    assert split_titles("\n  Disk usage on nodes.\n", 1) == ["Disk usage on nodes"]
    assert split_titles("", 1) == [None]
    assert split_titles("no numbers here", 2) == [None, None]


def test_the_scripted_llm_answers_a_title_list_and_leaves_out_marked_questions() -> None:
    messages = [{"role": "user", "content": prompt(
        ["one two three four five six seven", f"skip {NO_TITLE_MARKER}", "last one"])}]
    assert titles_reply(messages) == "1. Title: one two three four five six\n3. Title: last one"


def test_shares_are_even_and_add_up() -> None:
    assert shares(10, 3) == [4, 3, 3]
    assert shares(2, 4) == [1, 1, 0, 0]
    assert sum(shares(1001, 16)) == 1001


class Charges:
    """A quota plugin that records what it is charged."""

    def __init__(self) -> None:
        self.charged: list[tuple[str, int, int, str]] = []

    @hookimpl
    async def lcore_quota_consume(self, auth: AuthTuple, usage: Any, ticket: Any) -> None:
        self.charged.append((auth.user_id, usage.input_tokens, usage.output_tokens,
                             ticket.endpoint))


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as scripted:
        yield scripted


@pytest.fixture
async def proxy(llm: ScriptedLLM) -> AsyncIterator[TcpProxy]:
    front = TcpProxy("127.0.0.1", llm.port)
    front.count_http = True
    await front.start()
    yield front
    await front.close()


@pytest.fixture
def summaries_app(make_app: Any, proxy: TcpProxy) -> Any:
    def make(*plugins: object, **settings: Any) -> Any:
        return make_app({"llama_stack": {"url": f"http://127.0.0.1:{proxy.port}"},
                         "conversation_cache": {"type": "memory"},
                         "topic_summary": settings}, *plugins)
    return make


async def _conversation(app: Any, user: str = "alice") -> str:
    conversation_id = "conv_" + uuid.uuid4().hex
    await app.runtime.userdb.record_turn(conversation_id, user, model="m", provider="p",
                                         chained=True)
    await app.runtime.cache.insert(user, conversation_id, CacheEntry("question", "answer"))
    return conversation_id


def _item(conversation_id: str, question: str, auth: AuthTuple = ALICE) -> Item:
    return Item(auth=auth, quota_auth=auth, conversation_id=conversation_id, question=question,
                provider="openai", model="scripted-llm", model_id="openai/scripted-llm")


def skip_lines(caplog: pytest.LogCaptureFixture, reason: str) -> int:
    """The `topic summary skipped` log lines' count of titles skipped for `reason`."""
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    return sum(int(m["count"]) for m in logged
               if m.get("event") == "topic summary skipped" and m.get("reason") == reason)


def _skipped(app: Any, reason: str) -> float:
    return app.runtime.registry.get_sample_value(
        "ls_background_llm_skipped_total", {"purpose": "topic_summary", "reason": reason}) or 0


async def _topic(app: Any, conversation_id: str) -> str | None:
    return (await app.runtime.userdb.get(conversation_id))["topic_summary"]  # type: ignore[no-any-return]


async def test_titles_asked_together_share_one_call(summaries_app: Any, llm: ScriptedLLM,
                                                    proxy: TcpProxy) -> None:
    app = summaries_app(batch_window_ms=300)
    async with app.test_app():
        conversations = [await _conversation(app) for _ in range(5)]
        for n, conversation_id in enumerate(conversations):
            app.runtime.summaries.request(_item(conversation_id, f"question number {n} here"))
        await app.runtime.drain()
        assert [await _topic(app, c) for c in conversations] == [
            f"Title: question number {n} here" for n in range(5)]
        (asked,) = llm.titles_requests
        assert proxy.requests[CHAT] == 1
        assert asked.body["max_tokens"] == 5 * 24
        assert "stream" not in asked.body or asked.body["stream"] is False


async def test_a_batch_holds_at_most_batch_size_titles(summaries_app: Any,
                                                       llm: ScriptedLLM) -> None:
    app = summaries_app(batch_window_ms=60_000, batch_size=3)
    async with app.test_app():
        conversations = [await _conversation(app) for _ in range(7)]
        for conversation_id in conversations:
            app.runtime.summaries.request(_item(conversation_id, "q"))
        # Two full batches go at once; the seventh title waits for its window (or the drain).
        for _ in range(100):
            if len(llm.titles_requests) == 2:
                break
            await asyncio.sleep(0.05)
        assert [r.text.count("\n") for r in llm.titles_requests] == [3, 3]
        await app.runtime.drain()
        assert len(llm.titles_requests) == 3
        assert [await _topic(app, c) for c in conversations] == ["Title: q"] * 7


async def test_the_input_is_cut_to_max_input_chars(summaries_app: Any, llm: ScriptedLLM) -> None:
    app = summaries_app(max_input_chars=12, batch_window_ms=0)
    async with app.test_app():
        conversation_id = await _conversation(app)
        app.runtime.summaries.request(_item(conversation_id, "abcdefghij klmnopqrstuvwxyz"))
        await app.runtime.drain()
        (asked,) = llm.titles_requests
        assert asked.messages[-1]["content"] == "1. abcdefghij k"


async def test_concurrent_calls_stay_under_the_cap(summaries_app: Any, llm: ScriptedLLM,
                                                   proxy: TcpProxy) -> None:
    llm.script(lambda messages: TITLES_MARKER in str(messages), delay=0.3,
               text=lambda messages: "1. Slow title")
    app = summaries_app(batch_window_ms=0, batch_size=1, max_concurrent_calls=2)
    async with app.test_app():
        conversations = [await _conversation(app) for _ in range(8)]
        for conversation_id in conversations:
            app.runtime.summaries.request(_item(conversation_id, "burst"))
        await app.runtime.drain(timeout=30)
        assert proxy.requests[CHAT] == 8
        assert proxy.peak[CHAT] == 2
        assert [await _topic(app, c) for c in conversations] == ["Slow title"] * 8


async def test_a_full_queue_skips_logs_and_counts(summaries_app: Any, llm: ScriptedLLM,
                                                  proxy: TcpProxy,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    llm.script(lambda messages: TITLES_MARKER in str(messages), delay=0.5,
               text=lambda messages: "1. Late title")
    app = summaries_app(batch_window_ms=0, batch_size=1, max_concurrent_calls=1, max_queued=2)
    async with app.test_app():
        conversations = [await _conversation(app) for _ in range(6)]
        caplog.set_level(logging.WARNING, logger="lcore.summaries")
        for conversation_id in conversations:
            app.runtime.summaries.request(_item(conversation_id, "crowd"))
        # One call runs, two wait, three are skipped at once.
        assert _skipped(app, "queue_full") == 3
        assert skip_lines(caplog, "queue_full") == 3
        await app.runtime.drain(timeout=30)
        assert proxy.requests[CHAT] == 3
        topics = [await _topic(app, c) for c in conversations]
        assert topics == ["Late title"] * 3 + [None] * 3


async def test_a_question_without_a_title_in_the_reply_is_counted(summaries_app: Any) -> None:
    app = summaries_app(batch_window_ms=200)
    async with app.test_app():
        titled, untitled = await _conversation(app), await _conversation(app)
        app.runtime.summaries.request(_item(titled, "good question"))
        app.runtime.summaries.request(_item(untitled, f"odd {NO_TITLE_MARKER}"))
        await app.runtime.drain()
        assert (await _topic(app, titled), await _topic(app, untitled)) == (
            "Title: good question", None)
        assert _skipped(app, "no_title") == 1


async def test_a_failed_call_is_counted_and_the_answer_path_unaffected(
        summaries_app: Any, llm: ScriptedLLM) -> None:
    llm.script(lambda messages: TITLES_MARKER in str(messages), status=500)
    app = summaries_app(batch_window_ms=0)
    async with app.test_app():
        conversation_id = await _conversation(app)
        app.runtime.summaries.request(_item(conversation_id, "doomed"))
        await app.runtime.drain()
        assert await _topic(app, conversation_id) is None
        assert _skipped(app, "failed") == 1
        assert app.runtime.registry.get_sample_value(
            "ls_llm_calls_failures_total",
            {"provider": "openai", "model": "scripted-llm", "endpoint": "topic_summary"}) == 1


async def test_a_rename_before_the_title_wins(summaries_app: Any) -> None:
    app = summaries_app(batch_window_ms=200)
    async with app.test_app():
        conversation_id = await _conversation(app)
        app.runtime.summaries.request(_item(conversation_id, "original question"))
        await app.runtime.userdb.set_topic_summary(conversation_id, "Mine")
        await app.runtime.cache.set_topic_summary("alice", conversation_id, "Mine")
        await app.runtime.drain()
        assert await _topic(app, conversation_id) == "Mine"
        (listed,) = await app.runtime.cache.list("alice")
        assert listed.topic_summary == "Mine"


async def test_each_caller_is_charged_its_share_and_tokens_are_counted(
        summaries_app: Any, llm: ScriptedLLM) -> None:
    charges = Charges()
    app = summaries_app(charges, batch_window_ms=300)
    bob = AuthTuple("bob", "bob")
    async with app.test_app():
        first, second = await _conversation(app), await _conversation(app, "bob")
        app.runtime.summaries.request(_item(first, "alpha beta"))
        app.runtime.summaries.request(_item(second, "gamma delta epsilon", bob))
        await app.runtime.drain()
    (asked,) = llm.titles_requests
    sent = sum(count_words(str(m["content"])) for m in asked.messages)
    received = count_words("1. Title: alpha beta\n2. Title: gamma delta epsilon")
    (sent_a, sent_b), (received_a, received_b) = shares(sent, 2), shares(received, 2)
    assert charges.charged == [("alice", sent_a, received_a, "topic_summary"),
                               ("bob", sent_b, received_b, "topic_summary")]
    labels = {"provider": "openai", "model": "scripted-llm", "endpoint": "topic_summary"}
    registry = app.runtime.registry
    assert registry.get_sample_value("ls_llm_token_sent_total", labels) == sent
    assert registry.get_sample_value("ls_llm_token_received_total", labels) == received


async def test_charging_can_be_switched_off(summaries_app: Any) -> None:
    charges = Charges()
    app = summaries_app(charges, batch_window_ms=0, charge_quota=False)
    async with app.test_app():
        conversation_id = await _conversation(app)
        app.runtime.summaries.request(_item(conversation_id, "free title"))
        await app.runtime.drain()
        assert await _topic(app, conversation_id) == "Title: free title"
    assert charges.charged == []


async def test_shutdown_writes_what_waits_without_waiting_for_the_window(
        summaries_app: Any, llm: ScriptedLLM) -> None:
    app = summaries_app(batch_window_ms=60_000)
    async with app.test_app():
        conversation_id = await _conversation(app)
        app.runtime.summaries.request(_item(conversation_id, "last words"))
    assert len(llm.titles_requests) == 1
    assert app.runtime.summaries.waiting == [] and not app.runtime.summaries.calls


async def test_switched_off_there_is_no_summarizer(summaries_app: Any) -> None:
    app = summaries_app(enabled=False)
    assert app.runtime.summaries is None


# --- the configuration section ---------------------------------------------------------------

BASE = "name: x\nllama_stack:\n  url: http://127.0.0.1:9\n"


def test_defaults() -> None:
    from lcore_core.config.schema import TopicSummarySchema

    assert TopicSummarySchema().load({}) == {
        "enabled": True, "model": None, "provider": None, "max_input_chars": 1000,
        "max_output_tokens": 24, "batch_window_ms": 1000, "batch_size": 16,
        "max_concurrent_calls": 2, "max_queued": 64, "charge_quota": True}


@pytest.mark.parametrize(("section", "message"), [
    ("  max_concurrent_calls: 0\n", "topic_summary.max_concurrent_calls: Must be greater than "
                                    "or equal to 1"),
    ("  batch_size: 65\n", "topic_summary.batch_size: Must be"),
    ("  max_queued: -1\n", "topic_summary.max_queued: Must be"),
    ("  batch_window_ms: fast\n", "topic_summary.batch_window_ms: Not a valid integer."),
    ("  model: small\n", "topic_summary.provider: model and provider go together"),
    ("  batch: 5\n", "topic_summary.batch: unknown key"),
])
def test_config_errors_name_the_file_and_key(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "lightspeed-stack.yaml"
    path.write_text(BASE + "topic_summary:\n" + section)
    with pytest.raises(ConfigError) as caught:
        load_config(path, load_plugins(entrypoints=False))
    assert f"{path}:" in str(caught.value)
    assert message in str(caught.value)


async def test_a_drain_that_runs_out_cancels_the_calls_and_counts_them(
        summaries_app: Any, llm: ScriptedLLM) -> None:
    llm.script(lambda messages: TITLES_MARKER in str(messages), delay=5.0,
               text=lambda messages: "1. Too late")
    app = summaries_app(batch_window_ms=0, batch_size=1, max_concurrent_calls=1)
    async with app.test_app():
        summaries = app.runtime.summaries
        first, second = await _conversation(app), await _conversation(app)
        summaries.request(_item(first, "slow"))
        summaries.request(_item(second, "slower"))
        (call,) = summaries.calls
        await app.runtime.drain(timeout=0.3)
        assert call.cancelled()
        assert (summaries.calls, summaries.waiting, summaries.running) == ({}, [], 0)
        assert _skipped(app, "shutdown") == 2
        assert (await _topic(app, first), await _topic(app, second)) == (None, None)


async def test_with_no_queue_a_title_goes_only_to_a_free_slot(summaries_app: Any,
                                                              llm: ScriptedLLM) -> None:
    llm.script(lambda messages: TITLES_MARKER in str(messages), delay=0.5,
               text=lambda messages: "1. Taken")
    app = summaries_app(batch_window_ms=0, max_concurrent_calls=1, max_queued=0)
    async with app.test_app():
        first, second = await _conversation(app), await _conversation(app)
        app.runtime.summaries.request(_item(first, "one"))
        app.runtime.summaries.request(_item(second, "two"))
        await app.runtime.drain()
        assert (await _topic(app, first), await _topic(app, second)) == ("Taken", None)
        assert _skipped(app, "queue_full") == 1
