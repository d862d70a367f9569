"""Metrics plumbing on a hermetic app: collector clashes, the cache wrapper, /metrics access,
the overhead arithmetic and the multiprocess directory."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families
from quart import Blueprint, jsonify

from lcore_core import CacheBackend, ConversationCache, hookimpl
from lcore_core.app import create_app
from lcore_core.cache import CacheEntry, MemoryCache
from lcore_core.errors import ConfigError
from lcore_core.llama import llama_errors
from lcore_core.metrics import MULTIPROC_ENV, prepare_multiprocess_dir, remove_multiprocess_dir
from lcore_core.plugins import load_plugins


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


class CounterPlugin:
    def __init__(self, metric: str) -> None:
        self.metric = metric

    @hookimpl
    def lcore_metrics(self, registry: Any) -> None:
        Counter(self.metric, "a plugin's counter", registry=registry)


def test_collector_clash_between_plugins_names_both(write_config: Any) -> None:
    plugins = load_plugins(entrypoints=False)
    plugins.register(CounterPlugin("acme_widgets"), "acme-one")
    plugins.register(CounterPlugin("acme_widgets"), "acme-two")
    with pytest.raises(ConfigError) as err:
        create_app(write_config({}), plugins=plugins)
    message = str(err.value)
    assert "metric collector clash" in message and "acme_widgets" in message
    assert "'acme-one'" in message and "'acme-two'" in message


def test_collector_clash_with_a_core_metric_names_the_core(make_app: Any) -> None:
    class Clasher:
        @hookimpl
        def lcore_metrics(self, registry: Any) -> None:
            Gauge("ls_llm_calls_total", "clashes with the core", registry=registry)

    with pytest.raises(ConfigError, match="already registered") as err:
        make_app({}, Clasher())
    assert "lcore-core" in str(err.value)


async def test_plugin_collectors_are_exposed(make_app: Any) -> None:
    app = make_app({}, CounterPlugin("acme_widgets"), CounterPlugin("acme_gadgets"))
    text = await (await app.test_client().get("/metrics")).get_data(as_text=True)
    assert value(text, "acme_widgets_total") == 0.0
    assert ("acme_gadgets_total", frozenset()) in samples(text)


class FlakyCache(MemoryCache):
    """A memory cache whose `get` fails: stands in for any third-party backend."""

    async def get(self, user_id: str, conversation_id: str) -> list[CacheEntry]:
        raise ConnectionError("cache down")


class FlakyBackend:
    @hookimpl
    def lcore_cache_backends(self) -> list[CacheBackend]:
        return [CacheBackend("flaky", lambda settings, config: FlakyCache())]


async def test_cache_calls_and_errors_are_counted_by_backend(make_app: Any) -> None:
    app = make_app({"conversation_cache": {"type": "flaky"}}, FlakyBackend())
    cache = app.runtime.cache
    assert isinstance(cache.backend, FlakyCache)  # counted behind a wrapper, left as it is
    assert "insert" not in vars(cache.backend)
    assert isinstance(cache, ConversationCache)
    entry = CacheEntry(query="q", response="r")
    await cache.insert("u1", "c1", entry)
    await cache.insert("u1", "c1", entry)
    assert [c.conversation_id for c in await cache.list("u1")] == ["c1"]
    with pytest.raises(ConnectionError):
        await cache.get("u1", "c1")
    text = await (await app.test_client().get("/metrics")).get_data(as_text=True)
    ops = {op: value(text, "ls_cache_operations_total", backend="flaky", operation=op)
           for op in ("insert", "list", "get", "delete")}
    assert ops == {"insert": 2.0, "list": 1.0, "get": 1.0, "delete": 0.0}
    assert value(text, "ls_cache_errors_total", backend="flaky", operation="get") == 1.0
    assert value(text, "ls_cache_errors_total", backend="flaky", operation="insert") == 0.0


RULES = {"authorization": {"always_apply_access_rules": True,
                           "access_rules": [{"role": "*", "actions": ["info"]}]}}


async def test_metrics_need_get_metrics_unless_public(make_app: Any) -> None:
    guarded = make_app(RULES).test_client()
    assert (await guarded.get("/metrics")).status_code == 403
    public = make_app({**RULES, "authentication": {"module": "noop",
                                                   "skip_for_metrics": True}}).test_client()
    response = await public.get("/metrics")
    assert response.status_code == 200
    assert "ls_rest_api_calls_total" in await response.get_data(as_text=True)
    allowed = make_app({"authorization": {"always_apply_access_rules": True, "access_rules": [
        {"role": "*", "actions": ["get_metrics"]}]}}).test_client()
    assert (await allowed.get("/metrics")).status_code == 200


WAIT_S, WORK_S = 0.4, 0.05
timing_bp = Blueprint("timing_test", __name__)


@timing_bp.get("/v1/test/slow/<item>")
async def slow(item: str) -> Any:
    with llama_errors():  # what every Llama Stack call is wrapped in
        await asyncio.sleep(WAIT_S)
    await asyncio.sleep(WORK_S)  # LCore's own time
    return jsonify({"item": item})


class Timing:
    @hookimpl
    def lcore_blueprints(self) -> list[Blueprint]:
        return [timing_bp]


async def test_overhead_header_excludes_time_waiting_on_llama_stack(make_app: Any) -> None:
    client = make_app({}, Timing()).test_client()
    response = await client.get("/v1/test/slow/a")
    overhead_ms = float(response.headers["X-LCore-Overhead-Ms"])
    assert WORK_S * 1000 <= overhead_ms < WAIT_S * 1000
    plain = await client.get("/v1/liveness")
    assert float(plain.headers["X-LCore-Overhead-Ms"]) >= 0
    text = await (await client.get("/metrics")).get_data(as_text=True)
    path = "/v1/test/slow/<item>"
    assert value(text, "ls_overhead_seconds_count", path=path) == 1.0
    assert value(text, "ls_overhead_seconds_sum", path=path) == pytest.approx(
        overhead_ms / 1000, abs=1e-5)
    assert value(text, "ls_response_duration_seconds_count", path=path) == 1.0
    assert value(text, "ls_response_duration_seconds_sum", path=path) >= WAIT_S + WORK_S
    # No Llama Stack call, no overhead sample: the histogram is about proxied requests.
    assert value(text, "ls_overhead_seconds_count", path="/v1/liveness") == 0.0


async def test_invalid_bodies_are_counted(make_app: Any) -> None:
    client = make_app({}).test_client()
    assert (await client.post("/v2/query", json={"no": "query"})).status_code == 422
    assert (await client.post("/v2/query", data="{", headers={
        "Content-Type": "application/json"})).status_code == 422
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert value(text, "ls_request_validation_errors_total", path="/v2/query") == 2.0
    assert value(text, "ls_rest_api_calls_total", path="/v2/query", status_code="422") == 2.0


def test_multiprocess_dir_is_created_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    assert prepare_multiprocess_dir(1) is None and MULTIPROC_ENV not in os.environ
    created = prepare_multiprocess_dir(2)
    assert created is not None and created.is_dir()
    assert os.environ[MULTIPROC_ENV] == str(created)
    remove_multiprocess_dir(created)
    assert not created.exists() and MULTIPROC_ENV not in os.environ


def test_given_multiprocess_dir_is_emptied_of_stale_samples(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    given = tmp_path / "prom"
    given.mkdir()
    (given / "counter_1234.db").write_bytes(b"stale")
    (given / "README").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    assert prepare_multiprocess_dir(2) is None  # the operator's directory is not removed
    assert sorted(p.name for p in given.iterdir()) == ["README"]
