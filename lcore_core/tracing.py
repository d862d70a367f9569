"""Optional OpenTelemetry tracing: a server span per request with child spans for authentication,
quota, Llama Stack calls and storage, sent to a collector over OTLP/HTTP.

OpenTelemetry is an extra (`pip install 'lcore-core[tracing]'`), imported only when
`service.tracing.enabled` is true. With tracing off, `span()` costs one context-variable read and
hands back a shared object that does nothing: LCore's whole overhead budget is about 2 ms per
request, and most deployments never trace.

Each app has a TracerProvider of its own, never installed as OpenTelemetry's global one, so two
apps in one process (tests, embedding) cannot mix their spans. The request middleware makes its
app's `Tracing` current for that request (a context variable); every `span()` in the request, in
the core or in a plugin, then joins the request's trace. Work started with `Runtime.spawn` runs in
a fresh context and is not traced.

Attributes name things (route, model, user id, backend); they never carry a token, a header
value, an API key or the user's query. A failed span records the error's type, never its message,
which may quote user input.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

import structlog

from lcore_core.errors import ConfigError, LCoreError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

INSTALL_HINT = "pip install 'lcore-core[tracing]'"
NOT_INSTALLED = f"tracing is enabled but OpenTelemetry is not installed; {INSTALL_HINT}"
# Where spans go when neither the configuration nor the standard variables say.
DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
TRACES_PATH = "/v1/traces"
# OpenTelemetry's own variables, read by its exporter when `endpoint` is not configured.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# What `configure` imports; all of it comes with the `tracing` extra.
REQUIRED_MODULES = ("opentelemetry.trace", "opentelemetry.sdk.trace",
                    "opentelemetry.exporter.otlp.proto.http.trace_exporter")

log = structlog.get_logger("lcore.tracing")

AttributeValue = str | bool | int | float
Attributes = Mapping[str, AttributeValue]
P = ParamSpec("P")
R = TypeVar("R")


class SpanLike(Protocol):
    """The part of a span that code inside `with span(...) as s:` may use."""

    def set_attribute(self, key: str, value: AttributeValue) -> Any: ...


class _NoSpan:
    """What `span()` returns when the request is not traced: one shared, stateless instance."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None


NO_SPAN = _NoSpan()

_active: contextvars.ContextVar[Tracing | None] = contextvars.ContextVar("lcore_tracing",
                                                                    default=None)


def span(name: str, attributes: Attributes | None = None) -> AbstractContextManager[SpanLike]:
    """A child span of the current one, named `name`; a no-op when the request is not traced."""
    tracing = _active.get()
    if tracing is None:
        return NO_SPAN
    return tracing.child(name, attributes)


def background_context() -> contextvars.Context:
    """A fresh context for work that outlives the request (a topic summary): none of the
    request's state, only its trace, so the work's spans still join the request's trace."""
    fresh = contextvars.Context()
    tracing = _active.get()
    if tracing is not None:
        fresh.run(tracing.adopt, tracing._context.get_current())
    return fresh


def traced(name: str, attributes: Attributes | None = None
           ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate an async function so each call is a span named `name` (when traced)."""

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            tracing = _active.get()
            if tracing is None:
                return await fn(*args, **kwargs)
            with tracing.child(name, attributes):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate


def outgoing_headers() -> dict[str, str]:
    """A new dict with the W3C `traceparent` (and `tracestate`) of the current span, so a backend
    that traces too joins the request's trace; empty when the request is not traced."""
    headers: dict[str, str] = {}
    tracing = _active.get()
    if tracing is not None:
        tracing.propagator.inject(headers)
    return headers


def installed() -> bool:
    """Whether the `tracing` extra's packages can be imported (checked when the config loads)."""
    try:
        for module in REQUIRED_MODULES:
            __import__(module)
    except ImportError:
        return False
    return True


def traces_url(endpoint: str | None) -> str | None:
    """The URL spans are posted to: `<endpoint>/v1/traces`, as OTEL_EXPORTER_OTLP_ENDPOINT means.

    None lets the exporter read OpenTelemetry's variables when one is set; with none set, spans go
    to a collector on this machine's loopback address.
    """
    if endpoint:
        return endpoint.rstrip("/") + TRACES_PATH
    if any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return None
    return DEFAULT_ENDPOINT + TRACES_PATH


def configure(settings: Mapping[str, Any] | None, *, source: str | None = None) -> Tracing | None:
    """The app's `Tracing` for a `service.tracing` section (or the like mapping that
    `observability.tracing_settings` makes of OTEL_* variables), or None when tracing is off.

    Raises `ConfigError` naming the key when tracing is on but OpenTelemetry is missing.
    """
    if not settings or not settings.get("enabled"):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ConfigError(f"{NOT_INSTALLED} ({exc})", file=source,
                          key="service.tracing.enabled") from None
    from lcore_core import __version__

    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        # OpenTelemetry then hands out tracers that record nothing: say why no span arrives.
        log.warning("tracing is enabled but OTEL_SDK_DISABLED=true switches OpenTelemetry off;"
                    " no spans will be exported", key="service.tracing.enabled", file=source)
    resource = Resource.create({"service.name": settings.get("service_name") or "lcore",
                                "service.version": __version__})
    # By default a caller's sampling decision (its traceparent) wins; new traces are sampled
    # by ratio.
    ratio = TraceIdRatioBased(float(settings.get("sample_ratio", 1.0)))
    sampler = ParentBased(ratio) if settings.get("parent_based", True) else ratio
    provider = TracerProvider(resource=resource, sampler=sampler)
    exporter = OTLPSpanExporter(
        endpoint=settings.get("traces_url") or traces_url(settings.get("endpoint")),
        headers=settings.get("headers"), certificate_file=settings.get("certificate_file"),
        client_key_file=settings.get("client_key_file"),
        client_certificate_file=settings.get("client_certificate_file"))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, extract=settings.get("extract", True))


class Tracing:
    """One app's tracer, and the request-level steps the middleware takes."""

    def __init__(self, provider: TracerProvider, *, extract: bool = True) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("lcore_core")
        self.propagator = TraceContextTextMapPropagator()
        # False (OTEL_PROPAGATORS=none): a caller's traceparent is not followed.
        self.extract = extract
        self._trace = trace
        self._context = context

    @contextlib.contextmanager
    def child(self, name: str, attributes: Attributes | None = None) -> Iterator[Span]:
        """A span under the current one; an exception marks it failed and goes on."""
        # OpenTelemetry's own exception recording would store the message (and a traceback).
        with self.tracer.start_as_current_span(name, attributes=attributes,
                                               record_exception=False,
                                               set_status_on_exception=False) as current:
            try:
                yield current
            except Exception as exc:
                self.failed(current, exc)
                raise

    def adopt(self, trace_context: Any) -> None:
        """Make `trace_context` (OpenTelemetry's) current in this context (a new one)."""
        self._context.attach(trace_context)
        _active.set(self)

    def failed(self, current: Span, exc: BaseException) -> None:
        """Mark `current` failed by the error's type (and LCore status), not its message."""
        kind = type(exc).__name__
        current.set_attribute("error.type", kind)
        if isinstance(exc, LCoreError):
            current.set_attribute("lcore.error.status", exc.status)
        current.set_status(self._trace.Status(self._trace.StatusCode.ERROR, kind))

    def begin_request(self, method: str, route: str, headers: Any, request_id: str) -> Span:
        """Start the request's server span and make it current for the rest of the request.

        A valid `traceparent` from the caller makes it a child of the caller's span. `headers`
        is read only for the W3C trace context headers.
        """
        parent = self.propagator.extract(headers) if self.extract else None
        server = self.tracer.start_span(
            f"{method} {route}", context=parent, kind=self._trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route,
                        "lcore.request_id": request_id})
        # Never detached: this context belongs to the request's own task, which ends with it.
        self._context.attach(self._trace.set_span_in_context(server, parent))
        _active.set(self)
        return server

    def end_request(self, server: Span, status: int | None, user_id: str | None) -> None:
        """End the server span with the response status (None: the request got no response)."""
        if user_id:
            server.set_attribute("enduser.id", user_id)
        if status is None:
            server.set_attribute("error.type", "no response")
            server.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "no response"))
        else:
            server.set_attribute("http.response.status_code", status)
            if status >= 500:  # a 4xx is the caller's error, not the server's
                server.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(status)))
        server.end()

    def shutdown(self) -> None:
        """Export the spans still queued, then stop the exporter (blocking: run it off the loop)."""
        self.provider.force_flush()
        self.provider.shutdown()
