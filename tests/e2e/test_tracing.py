"""OpenTelemetry tracing end to end: LCore (with lcore-quota) -> real Llama Stack -> scripted LLM,
its spans exported over OTLP/HTTP to a loopback collector that decodes them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.auth import DEFAULT_USER_ID
from lcore_core.plugins import load_plugins
from lcore_core.testing.llm import DEFAULT_LLM_MODEL
from lcore_core.testing.otlp import SERVER, OtlpReceiver, RecordedSpan

from .support import lcore_config, parse_sse, started

pytestmark = pytest.mark.e2e

# Unique and greppable: none of them may appear in what LCore exports.
API_KEY = f"lcore-api-key-{uuid.uuid4().hex}"
WRONG_KEY = f"wrong-api-key-{uuid.uuid4().hex}"
LLAMA_STACK_KEY = f"llama-stack-key-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
STATUS_ERROR = 2  # opentelemetry.proto's Status.STATUS_CODE_ERROR


def traced_app(workdir: Path, llama_url: str, receiver: OtlpReceiver, *,
               enabled: bool = True) -> Any:
    """An app with API-key auth, a Llama Stack API key and lcore-quota (from its entry point)."""
    quota = {"sqlite": {"db_path": str(workdir / "quota.db")},
             "limiters": [{"name": "daily", "type": "user_limiter", "initial_quota": 100_000,
                           "quota_increase": 0, "period": "1 day"}],
             "reservation_tokens": 50, "reservation_chars_per_token": 0}
    config = lcore_config(
        workdir, "server", llama_url, quota_handlers=quota,
        service={"host": "127.0.0.1", "port": 8080,
                 "tracing": {"enabled": enabled, "endpoint": receiver.url,
                             "service_name": "lcore-tracing-test"}},
        llama_stack={"url": llama_url, "api_key": LLAMA_STACK_KEY},
        authentication={"module": "api-key-token", "api_key_config": {"api_key": API_KEY}})
    plugins = load_plugins()
    assert plugins.distribution_of("quota") == "lcore-quota"
    return create_app(config, plugins=plugins)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
async def traced(tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any,
                 receiver: OtlpReceiver) -> AsyncIterator[Any]:
    """A started traced app; `flush(app)` sends its finished spans to `receiver`."""
    app = traced_app(tmp_path_factory.mktemp("tracing-e2e"), llama_stack_server.url, receiver)
    async with started(app) as test_app:
        app.client = test_app.test_client()  # type: ignore[attr-defined]
        yield app


async def flush(app: Any) -> None:
    assert await asyncio.to_thread(app.runtime.tracing.provider.force_flush)


def server_span(spans: list[RecordedSpan], request_id: str) -> RecordedSpan:
    [found] = [s for s in spans if s.kind == SERVER
               and s.attributes.get("lcore.request_id") == request_id]
    return found


def children_of(spans: list[RecordedSpan], parent: RecordedSpan) -> dict[str, RecordedSpan]:
    """The direct children of `parent` by name (the first of each name, by start time)."""
    found: dict[str, RecordedSpan] = {}
    for span in sorted(spans, key=lambda s: s.start):
        if span.trace_id == parent.trace_id and span.parent_id == parent.span_id:
            found.setdefault(span.name, span)
    return found


def assert_nothing_secret(receiver: OtlpReceiver, *texts: str) -> None:
    raw = receiver.raw()
    assert raw, "nothing was exported"
    for text in (API_KEY, WRONG_KEY, LLAMA_STACK_KEY, *texts):
        assert text.encode() not in raw, f"{text[:20]}... was exported"


async def test_a_query_is_one_trace_with_auth_quota_llama_stack_and_storage_spans(
        traced: Any, receiver: OtlpReceiver, llm: Any) -> None:
    question = f"what does tracing show {uuid.uuid4().hex}"
    response = await traced.client.post(
        "/v2/query", json={"query": question, "generate_topic_summary": False}, headers=AUTH)
    assert response.status_code == 200, await response.get_data(as_text=True)
    assert (await response.get_json())["available_quotas"]["daily"] < 100_000  # quota took part
    await flush(traced)

    spans = receiver.spans()
    server = server_span(spans, response.headers["X-Request-ID"])
    assert server.name == "POST /v2/query"
    assert server.parent_id == ""  # no traceparent came in: a new trace
    assert server.attributes["http.route"] == "/v2/query"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["enduser.id"] == DEFAULT_USER_ID
    assert server.resource["service.name"] == "lcore-tracing-test"

    children = children_of(spans, server)
    auth, check = children["lcore.auth"], children["lcore.quota.check"]
    call, consume = children["llama_stack.responses.create"], children["lcore.quota.consume"]
    record, insert = (children["lcore.storage.userdb.record_turn"],
                      children["lcore.storage.cache.insert"])
    assert auth.attributes == {"lcore.action": "query", "enduser.id": DEFAULT_USER_ID}
    assert check.attributes["enduser.id"] == DEFAULT_USER_ID
    assert call.attributes["gen_ai.request.model"].endswith(DEFAULT_LLM_MODEL)
    assert insert.attributes["lcore.cache.backend"] == "memory"
    # The pipeline's order, each step inside the request's span.
    assert auth.end <= check.start and check.end <= call.start and call.end <= consume.start
    # Once the answer is in, the quota settlement runs beside the user DB record, and the
    # cache insert follows the record.
    assert all(call.end <= span.start for span in (consume, record, insert))
    assert record.end <= insert.start
    for child in children.values():
        assert server.start <= child.start <= child.end <= server.end, child.name
        assert child.status_code != STATUS_ERROR, child.name
    # Every span of the trace hangs, directly or not, from the server span.
    trace = [s for s in spans if s.trace_id == server.trace_id]
    ids = {s.span_id for s in trace}
    assert all(s.parent_id in ids for s in trace if s is not server)
    assert_nothing_secret(receiver, question)


async def test_failed_authentication_is_a_failed_auth_span_without_the_token(
        traced: Any, receiver: OtlpReceiver, llm: Any) -> None:
    response = await traced.client.post(
        "/v2/query", json={"query": "never answered"},
        headers={"Authorization": f"Bearer {WRONG_KEY}"})
    assert response.status_code == 401
    await flush(traced)

    spans = receiver.spans()
    server = server_span(spans, response.headers["X-Request-ID"])
    assert server.attributes["http.response.status_code"] == 401
    assert server.status_code != STATUS_ERROR  # a 4xx is the caller's error
    children = children_of(spans, server)
    assert set(children) == {"lcore.auth"}  # nothing ran after authentication failed
    auth = children["lcore.auth"]
    assert auth.status_code == STATUS_ERROR
    # The error's type, not its message (which may quote what the caller sent).
    assert (auth.status_message, auth.events) == ("Unauthorized", [])
    assert auth.attributes["error.type"] == "Unauthorized"
    assert auth.attributes["lcore.error.status"] == 401
    assert_nothing_secret(receiver, "never answered")


async def test_a_stream_span_ends_after_its_last_event(traced: Any, receiver: OtlpReceiver,
                                                       llm: Any) -> None:
    question = f"stream a traced answer {uuid.uuid4().hex}"
    response = await traced.client.post(
        "/v2/streaming_query", json={"query": question, "generate_topic_summary": False},
        headers=AUTH)
    events = parse_sse(await response.get_data(as_text=True))
    assert response.status_code == 200 and events[-1]["event"] == "end", events
    await flush(traced)

    spans = receiver.spans()
    server = server_span(spans, response.headers["X-Request-ID"])
    assert server.name == "POST /v2/streaming_query"
    children = children_of(spans, server)
    call, consume = children["llama_stack.responses.create"], children["lcore.quota.consume"]
    insert = children["lcore.storage.cache.insert"]
    # Storing the turn happens after the last token: still inside the request's span.
    assert call.end <= consume.start <= insert.end <= server.end
    assert_nothing_secret(receiver, question)


async def test_the_topic_summary_call_joins_the_request_trace(traced: Any,
                                                              receiver: OtlpReceiver,
                                                              llm: Any) -> None:
    """The summary runs after the answer went out; its Llama Stack call is still a span of the
    request's trace, and the request's own time does not include it."""
    response = await traced.client.post("/v2/query", json={"query": "summarise me"},
                                        headers=AUTH)
    assert response.status_code == 200, await response.get_data(as_text=True)
    await traced.runtime.drain()
    await flush(traced)
    spans = receiver.spans()
    server = server_span(spans, response.headers["X-Request-ID"])
    calls = [s for s in children_of_all(spans, server)
             if s.name in ("llama_stack.responses.create", "llama_stack.chat.completions.create")]
    purposes = sorted(str(s.attributes.get("lcore.purpose", "answer")) for s in calls)
    assert purposes == ["answer", "topic_summary"]
    summary = next(s for s in calls if s.attributes.get("lcore.purpose") == "topic_summary")
    assert summary.start >= max(s.end for s in calls if s is not summary)
    assert summary.status_code != STATUS_ERROR


def children_of_all(spans: list[RecordedSpan], parent: RecordedSpan) -> list[RecordedSpan]:
    return [s for s in spans if s.trace_id == parent.trace_id and s.parent_id == parent.span_id]


async def query_with_traceparent(test_app: Any, query: str, traceparent: str) -> Any:
    """One authenticated query sent with a W3C `traceparent`; it must succeed."""
    response = await test_app.test_client().post(
        "/v2/query", json={"query": query, "generate_topic_summary": False},
        headers={**AUTH, "traceparent": traceparent})
    assert response.status_code == 200, await response.get_data(as_text=True)
    return response


async def test_incoming_traceparent_is_joined_and_spans_are_flushed_at_shutdown(
        tmp_path: Path, llama_stack_server: Any, llm: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches would otherwise leave every 5 s; only the shutdown's flush may send these.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    with OtlpReceiver() as receiver:
        app = traced_app(tmp_path, llama_stack_server.url, receiver)
        async with started(app) as test_app:
            response = await query_with_traceparent(test_app, "join my trace",
                                                    f"00-{trace_id}-{parent_id}-01")
            await asyncio.sleep(0.5)
            assert receiver.bodies == []  # still queued
        spans = receiver.spans()
    server = server_span(spans, response.headers["X-Request-ID"])
    assert (server.trace_id, server.parent_id) == (trace_id, parent_id)
    call = children_of(spans, server)["llama_stack.responses.create"]
    assert call.trace_id == trace_id


async def test_tracing_disabled_exports_nothing(tmp_path: Path, llama_stack_server: Any,
                                                llm: Any, monkeypatch: pytest.MonkeyPatch,
                                                ) -> None:
    with OtlpReceiver() as receiver:
        # Even OpenTelemetry's own variable pointing at the collector must not turn it on.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        app = traced_app(tmp_path, llama_stack_server.url, receiver, enabled=False)
        assert app.runtime.tracing is None
        async with started(app) as test_app:
            await query_with_traceparent(test_app, "not traced",
                                         f"00-{uuid.uuid4().hex}-{'1' * 16}-01")
        await asyncio.sleep(0.5)
        assert receiver.paths == []
