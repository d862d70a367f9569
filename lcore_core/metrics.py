"""The core's Prometheus collectors (upstream's `ls_*` names), request timing, multiprocess mode.

One registry per app. With several Hypercorn workers `PROMETHEUS_MULTIPROC_DIR` is set before any
worker starts, every worker writes its samples there, and `/metrics` adds them up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from lcore_core import tracing
from lcore_core.errors import ConfigError

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CORE_OWNER = "lcore-core"

# The cache methods counted by `count_cache_calls` (readiness and close are not operations).
CACHE_OPERATIONS = ("insert", "get", "delete", "list", "set_topic_summary")


class MetricsRegistry(CollectorRegistry):
    """A registry that knows which plugin registered each collector, to name both on a clash."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.owner = CORE_OWNER
        self.owners: dict[Collector, str] = {}

    def register(self, collector: Collector) -> None:
        try:
            super().register(collector)
        except ValueError as exc:
            other = self._clashing_owner(collector)
            raise ConfigError(
                f"metric collector clash: plugin {self.owner!r} registers {exc} which plugin "
                f"{other!r} already registered", key="plugins") from None
        self.owners[collector] = self.owner

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        self.owners.pop(collector, None)

    def _clashing_owner(self, collector: Collector) -> str:
        # Only the public API: try the newcomer next to each registered collector in turn.
        for existing, owner in self.owners.items():
            probe = CollectorRegistry(auto_describe=True)
            probe.register(existing)
            try:
                probe.register(collector)
            except ValueError:
                return owner
        return "?"


class CoreMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rest_api_calls = Counter(
            "ls_rest_api_calls_total", "REST API calls by path template and status",
            ["path", "status_code"], registry=registry)
        self.response_duration = Histogram(
            "ls_response_duration_seconds", "Response duration by path template (streams: "
            "until the last event)", ["path"], buckets=DURATION_BUCKETS, registry=registry)
        self.request_validation_errors = Counter(
            "ls_request_validation_errors_total", "Requests rejected as invalid (400, 422)",
            ["path"], registry=registry)
        self.llm_calls = Counter(
            "ls_llm_calls_total", "LLM calls by provider, model and endpoint",
            ["provider", "model", "endpoint"], registry=registry)
        self.llm_failures = Counter(
            "ls_llm_calls_failures_total", "Failed LLM calls", ["provider", "model", "endpoint"],
            registry=registry)
        self.validation_errors = Counter(
            "ls_llm_validation_errors_total", "Queries answered with a shield refusal",
            ["endpoint"], registry=registry)
        self.shield_violations = Counter(
            "ls_shield_violations_total", "Shield refusals by shield (a configured shield, the "
            "one Llama Stack shield of the query, or unknown)", ["shield"], registry=registry)
        self.tokens_sent = Counter(
            "ls_llm_token_sent_total", "Tokens sent to the LLM",
            ["provider", "model", "endpoint"], registry=registry)
        self.tokens_received = Counter(
            "ls_llm_token_received_total", "Tokens received from the LLM",
            ["provider", "model", "endpoint"], registry=registry)
        self.llm_duration = Histogram(
            "ls_llm_inference_duration_seconds", "Time spent waiting on the Llama Stack "
            "Responses call", ["provider", "model", "endpoint"], buckets=DURATION_BUCKETS,
            registry=registry)
        self.provider_model = Gauge(
            "ls_provider_model_configuration", "LLMs Llama Stack offers (1 = the configured "
            "default)", ["provider", "model"], registry=registry, multiprocess_mode="max")
        self.started_degraded = Gauge(
            "ls_started_in_degraded_mode", "1 when the service started without Llama Stack "
            "(llama_stack.allow_degraded_mode), else 0", registry=registry,
            multiprocess_mode="max")
        self.cache_operations = Counter(
            "ls_cache_operations_total", "Conversation cache calls by backend and operation",
            ["backend", "operation"], registry=registry)
        self.cache_errors = Counter(
            "ls_cache_errors_total", "Conversation cache calls that raised",
            ["backend", "operation"], registry=registry)
        self.response_write_timeouts = Counter(
            "ls_response_write_timeouts_total", "Responses ended because a write to the client "
            "waited longer than service.write_timeout_seconds", registry=registry)
        self.background_skipped = Counter(
            "ls_background_llm_skipped_total", "Background LLM calls (topic summaries) not made "
            "or without result, by purpose and reason (queue_full, failed, no_title, shutdown)",
            ["purpose", "reason"], registry=registry)
        self.overhead = Histogram(
            "ls_overhead_seconds", "Request time minus time waiting on Llama Stack, for requests "
            "that called it (streams included)", ["path"], buckets=OVERHEAD_BUCKETS,
            registry=registry)

    def set_models(self, models: list[dict[str, Any]], default: tuple[str, str]) -> None:
        """Publish the LLMs Llama Stack offers; the configured default is 1, the others 0."""
        for m in models:
            if m["model_type"] != "llm":
                continue
            provider = m["provider_id"]
            is_default = default in ((provider, m["provider_resource_id"]),
                                     (provider, m["identifier"]))
            self.provider_model.labels(provider, m["identifier"]).set(int(is_default))


# --- per-request timing -----------------------------------------------------------------------


@dataclass
class RequestStats:
    """What one request spent, and on what; the request log line is written from it."""

    path: str
    started: float
    llama_seconds: float = 0.0
    llama_calls: int = 0
    provider: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    overhead_seconds: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def overhead(self) -> float:
        """Time so far not spent waiting on Llama Stack; frozen by `freeze_overhead`."""
        if self.overhead_seconds is not None:
            return self.overhead_seconds
        return max(self.elapsed() - self.llama_seconds, 0.0)

    def freeze_overhead(self) -> float:
        """Fix the figure a stream reports in its `end` event, so the histogram records the same."""
        self.overhead_seconds = self.overhead()
        return self.overhead_seconds

    def log_fields(self) -> dict[str, Any]:
        fields = {"provider": self.provider, "model": self.model,
                  "input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        return {k: v for k, v in fields.items() if v is not None}


_current: ContextVar[RequestStats | None] = ContextVar("lcore_request_stats", default=None)


def begin_request(path: str) -> RequestStats:
    stats = RequestStats(path=path, started=time.perf_counter())
    _current.set(stats)
    return stats


def current_request() -> RequestStats | None:
    return _current.get()


@contextlib.contextmanager
def waiting_on_llama() -> Iterator[None]:
    """Count the time inside the block as time waiting on Llama Stack (not LCore's overhead)."""
    stats = _current.get()
    if stats is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        stats.llama_seconds += time.perf_counter() - started
        stats.llama_calls += 1


def observe_request(metrics: CoreMetrics, stats: RequestStats) -> float:
    """Record the duration and, for requests that called Llama Stack, the overhead."""
    elapsed = stats.elapsed()
    metrics.response_duration.labels(stats.path).observe(elapsed)
    if stats.llama_calls:
        metrics.overhead.labels(stats.path).observe(stats.overhead())
    return elapsed


async def timed_body(body: AsyncIterator[Any], on_end: Callable[[], None]) -> AsyncIterator[Any]:
    """Pass a streamed body through and call `on_end` when it ends, fails or is cut."""
    try:
        async for chunk in body:
            yield chunk
    finally:
        try:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            on_end()


# --- the conversation cache -------------------------------------------------------------------


def count_cache_calls(cache: Any, backend: str, metrics: CoreMetrics) -> Any:
    """`cache` behind a `CountedCache`: every call and failure counted by backend, whichever
    plugin provides the backend; in a traced request each call is also an
    `lcore.storage.cache.<operation>` span."""
    return CountedCache(cache, backend, metrics)


class CountedCache:
    """A conversation cache counted (`count_cache_calls`). The backend's object is left as it
    is (`backend`); anything else than the counted operations is the backend's own."""

    def __init__(self, cache: Any, backend: str, metrics: CoreMetrics) -> None:
        self.backend = cache
        for operation in CACHE_OPERATIONS:
            method = getattr(cache, operation, None)
            if method is not None:
                setattr(self, operation, _counted(method, backend, operation, metrics))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    # The lifecycle (not counted), declared so that the wrapper is a `ConversationCache`.
    async def setup(self) -> None:
        setup = getattr(self.backend, "setup", None)  # a backend written before it was asked
        if setup is not None:
            await setup()

    async def ready(self) -> None:
        await self.backend.ready()

    async def close(self) -> None:
        await self.backend.close()


def _counted(method: Any, backend: str, operation: str, metrics: CoreMetrics) -> Any:
    calls = metrics.cache_operations.labels(backend, operation)
    errors = metrics.cache_errors.labels(backend, operation)
    name, attributes = f"lcore.storage.cache.{operation}", {"lcore.cache.backend": backend}

    async def call(*args: Any, **kwargs: Any) -> Any:
        calls.inc()
        try:
            with tracing.span(name, attributes):
                return await method(*args, **kwargs)
        except Exception:
            errors.inc()
            raise

    call.__wrapped__ = method  # type: ignore[attr-defined]
    return call


# --- exposition and multiprocess mode ---------------------------------------------------------


def render(registry: MetricsRegistry) -> bytes:
    """The Prometheus text for `/metrics`: every worker's samples in multiprocess mode."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return generate_latest(registry)
    from prometheus_client.multiprocess import MultiProcessCollector

    combined = CollectorRegistry()
    MultiProcessCollector(combined, path=path)
    # A plugin's own collector (not a Counter/Gauge/...) computes its samples when asked; it is
    # not in the shared files, so this worker answers for it.
    for collector in registry.owners:
        if not isinstance(collector, MetricWrapperBase):
            combined.register(collector)
    return generate_latest(combined)


def prepare_multiprocess_dir(workers: int) -> Path | None:
    """Before starting `workers` > 1 processes: point prometheus-client at an empty directory.

    Uses `PROMETHEUS_MULTIPROC_DIR` when it is set (emptied of an earlier run's files, whose
    counters would otherwise be added to this run's), else a new temporary directory, which is
    returned so the caller removes it at exit. Must run before the workers import anything.
    """
    if workers <= 1:
        return None
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return None
    created = Path(tempfile.mkdtemp(prefix="lcore-metrics-"))
    os.environ[MULTIPROC_ENV] = str(created)
    return created


def remove_multiprocess_dir(created: Path | None) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        os.environ.pop(MULTIPROC_ENV, None)
