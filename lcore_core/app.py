"""`create_app`: the Quart application with its plugins, middleware and error handling."""

from __future__ import annotations

import asyncio
import gc
import re
import traceback
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import structlog
from quart import Quart, g, jsonify, request
from quart.wrappers.response import IterableBody
from quart_cors import cors
from werkzeug.exceptions import HTTPException

from lcore_core import azure, observability, skills, tracing
from lcore_core.builtins import Rbac
from lcore_core.config import DEFAULT_CONFIG, Config, validate_document
from lcore_core.config.loader import Document, read_document
from lcore_core.config.unified import has_unified_input
from lcore_core.errors import BackendUnavailable, ConfigError, LCoreError
from lcore_core.hookspecs import hookimpl
from lcore_core.interrupts import LiveStreams
from lcore_core.llama import CONNECT_ATTEMPT_TIMEOUT_S, LlamaStack, provider_data_header
from lcore_core.llama_config import synthesize_to_file
from lcore_core.local_model import LocalModel
from lcore_core.logs import configure_logging, flush_logging
from lcore_core.mcp import CoreHeaderValues, McpHealth, McpReadiness, check_reachable
from lcore_core.mcp_registry import McpRegistry
from lcore_core.metrics import (
    CoreMetrics,
    MetricsRegistry,
    RequestStats,
    begin_request,
    count_cache_calls,
    observe_request,
    timed_body,
)
from lcore_core.plugins import Plugins, load_plugins
from lcore_core.providers import ReadinessCheck
from lcore_core.runtime import Runtime
from lcore_core.saved_prompts import SavedPrompts
from lcore_core.storage import Storage
from lcore_core.summaries import TopicSummaries
from lcore_core.userdb import UserDB
from lcore_core.write_timeout import with_write_timeout

log = structlog.get_logger("lcore.app")

# Response headers a browser client may read (CORS); the quota ones come from lcore-quota.
EXPOSED_HEADERS = ["X-Request-ID", "X-LCore-Overhead-Ms", "Retry-After", "X-Quota-Limit",
                   "X-Quota-Remaining", "X-Quota-Reset"]
_HTTP_TEXT = {404: "Not found", 405: "Method not allowed", 413: "Request body too large",
              400: "Bad request"}


class LCoreApp(Quart):
    runtime: Runtime


def create_app(config: Config | str | Path | None = None, *, plugins: Plugins | None = None,
               extra_plugins: tuple[Any, ...] = ()) -> LCoreApp:
    """Build the app. `config` is a loaded `Config`, a path, or None for the embedded default.

    `plugins` defaults to the built-ins plus every installed `lcore` plugin; tests pass a manager
    of their own. Raises `ConfigError` for a bad configuration or a plugin that failed to load.
    """
    document: Document | None = None
    if plugins is None:
        if not isinstance(config, Config):
            # Parsed once, for the blocked plugins and then for validation.
            document = read_document(config or DEFAULT_CONFIG)
        # Blocking is read before loading so a blocked plugin is never imported.
        blocked = _blocked_plugins(document or config)
        plugins = load_plugins(blocked=blocked, extra=extra_plugins)
    if plugins.failures:
        raise ConfigError("; ".join(str(f) for f in plugins.failures), key="plugins")
    if not isinstance(config, Config):
        config = validate_document(document or read_document(config or DEFAULT_CONFIG), plugins)
    configure_logging(config.service.log_format)
    settings = config.service.get("tracing")
    if not (settings and settings.get("enabled")):
        otel = (config.get("observability") or {}).get("otel") or {}
        settings = observability.tracing_settings(otel)
    tracer = tracing.configure(settings, source=config.source)

    # No static folder: Quart's default /static/<file> route would serve files from the
    # working directory to anyone.
    app = LCoreApp("lcore", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.service.max_request_size
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    auth_provider = plugins.auth_providers()[config.authentication.module]
    plugins.register(Rbac(config, auth_provider), "rbac", distribution="lcore-core")
    registry = MetricsRegistry()
    metrics = CoreMetrics(registry)
    plugins.register_metrics(registry, config)
    backend = plugins.cache_backends()[config.conversation_cache.type]
    databases = Storage()
    plugins.register(CoreHeaderValues(), "mcp-headers", distribution="lcore-core")
    runtime = Runtime(
        config=config, plugins=plugins, registry=registry, metrics=metrics,
        authenticator=auth_provider.factory(config.authentication.get("settings"), config),
        cache=count_cache_calls(backend.build(config.conversation_cache.settings, config,
                                              databases),
                                config.conversation_cache.type, metrics),
        app=app, llama=LlamaStack(config.llama_stack),
        userdb=UserDB.open(config.database, databases), storage=databases,
        tracing=tracer,
    )
    runtime.saved_prompts = SavedPrompts(runtime.userdb)
    summary_settings = config.get("topic_summary")
    if summary_settings is not None and summary_settings.enabled:
        runtime.summaries = TopicSummaries(runtime, summary_settings)
    app.runtime = runtime
    plugins.register(CoreReadiness(runtime), "core-readiness", distribution="lcore-core")
    local_model = LocalModel(config.local_model) if config.get("local_model") else None
    if local_model is not None:
        # Its hooks: readiness, indexing documents at start-up, stopping the server at shutdown.
        plugins.register(local_model, "local-model", distribution="lcore-core")
    runtime.mcp = McpRegistry(config.mcp_servers)
    runtime.streams = LiveStreams()
    # Always there: a server registered at run time is probed like a configured one.
    runtime.mcp_health = McpHealth()
    if config.mcp_servers:
        plugins.register(McpReadiness(config.mcp_servers, runtime.mcp_health), "mcp-readiness",
                         distribution="lcore-core")

    _install_middleware(app, runtime)
    _install_error_handlers(app)
    if config.service.root_path:
        app.asgi_app = under_root_path(app.asgi_app, config.service.root_path)  # type: ignore[method-assign]
    app.asgi_app = with_write_timeout(  # type: ignore[method-assign]
        app.asgi_app, config.service.write_timeout_seconds,
        metrics.response_write_timeouts.inc)
    from lcore_core.endpoints import (
        catalog,
        conversations,
        feedback,
        mcp_auth,
        mcp_servers,
        prompts,
        query,
        responses,
        saved_prompts,
        system,
        vector_stores,
    )
    from lcore_core.endpoints import skills as skills_endpoint

    for module in (system, query, responses, conversations, catalog, feedback, mcp_auth,
                   mcp_servers, skills_endpoint, vector_stores, prompts, saved_prompts):
        app.register_blueprint(module.bp)
    for bp in plugins.blueprints(config):
        app.register_blueprint(bp)

    async def open_llama() -> None:
        if local_model is not None:
            # Before Llama Stack: its run.yaml reads the model server's URL from the environment.
            await local_model.start()
        if runtime.llama.library and has_unified_input(config):
            # Unified mode: LCore writes the run configuration the library client reads.
            runtime.llama.refuse_unified_on_ogx()
            path = await asyncio.to_thread(synthesize_to_file, config)
            runtime.llama.run_config_path = str(path)
            log.info("llama stack run configuration written", path=str(path))
        await runtime.llama.open()
        await _connect_llama(runtime)
        if config.get("azure_entra_id") and runtime.degraded is None:
            runtime.llama.azure = await azure.setup(runtime.llama.client, config.azure_entra_id)
            if runtime.llama.azure is not None:
                runtime.llama.azure.header = provider_data_header(runtime.llama.backend)

    async def check_mcp() -> None:
        if config.mcp_servers and not config.service.skip_unreachable_mcp:
            await check_reachable(config.mcp_servers)

    async def storage() -> None:
        await runtime.userdb.setup()
        await runtime.saved_prompts.setup()
        await runtime.cache.setup()

    @app.before_serving
    async def startup() -> None:
        # The user DB's schema (a worker thread waiting on the database) is built while the
        # Llama Stack client is set up (CPU in this thread) and the MCP servers are probed.
        try:
            await _concurrently(storage(), open_llama(), check_mcp(), skills.start(runtime))
        except BaseException:
            # A failed start-up gets no shutdown: the skills server must not outlive it.
            await skills.stop(runtime)
            raise
        await plugins.startup(runtime)
        if runtime.degraded is None:
            await _publish_models(runtime)
        for warning in config.warnings:
            log.warning("configuration", detail=warning)
        log.info("started", name=config.name, auth=config.authentication.module,
                 cache=config.conversation_cache.type, event_loop=_loop_name())

    @app.after_serving
    async def shutdown() -> None:
        try:
            await runtime.drain()
            await plugins.shutdown(runtime)
            await skills.stop(runtime)
            await runtime.cache.close()
            await runtime.llama.close()
            await databases.close()
        finally:
            if tracer is not None:
                # Last, so the spans of the work above are sent too.
                await asyncio.to_thread(tracer.shutdown)
            # A worker process of `--workers N` ends without running atexit: write the queued
            # lines now; what is logged after this is written directly.
            flush_logging()

    cors_settings = config.service.cors
    if cors_settings is None:  # no `service.cors` section: browsers keep other origins out
        return app
    return cors(app, allow_origin=_cors_origins(cors_settings.allow_origins),
                allow_credentials=cors_settings.allow_credentials,
                allow_methods=cors_settings.allow_methods,
                allow_headers=cors_settings.allow_headers,
                expose_headers=EXPOSED_HEADERS)


def freeze_after_startup(app: Quart) -> None:
    """Once the app has started, move every object alive then out of the garbage collector's
    reach (`gc.freeze`): the modules, configuration, clients and pools a serving process keeps
    for its whole life. A full collection then walks only what requests made since; under load
    at c=16 one took 91 ms before (a stall of every request in flight), 3 ms after.

    For a serving process only (`lcore serve`, `lcore_core.asgi`): a process that makes many apps
    (the tests) would keep each one's leftovers for good.
    """

    @app.before_serving
    async def freeze() -> None:
        gc.collect()
        gc.freeze()
        log.info("startup objects frozen out of the garbage collector",
                 objects=gc.get_freeze_count())


class CoreReadiness:
    """Readiness of the core's own backends: Llama Stack and the user DB."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @hookimpl
    def lcore_readiness(self) -> list[ReadinessCheck]:
        runtime = self.runtime

        async def userdb() -> None:
            await runtime.userdb.ready()

        return [ReadinessCheck("llama-stack", runtime.llama.health),
                ReadinessCheck("database", userdb)]


def under_root_path(asgi_app: Any, root_path: str) -> Any:
    """Serve `<root_path>/...` as `/...` (a proxy that forwards the prefix), and `/...` too.

    Upstream hands `root_path` to FastAPI, whose router strips the prefix from a path that has
    it and routes any other path as it is. Quart answers 404 to a path outside a scope's
    `root_path`, so the prefix goes into the scope only of the requests that carry it (a
    `root_path` set by the server, e.g. Hypercorn's `--root-path`, is left alone).
    """
    prefix = root_path + "/"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] in ("http", "websocket") and not scope.get("root_path")
                and scope["path"].startswith(prefix)):
            scope = {**scope, "root_path": root_path}
        await asgi_app(scope, receive, send)

    return app


def _loop_name() -> str:
    """"uvloop" or "asyncio": the event loop this process runs on."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def _cors_origins(origins: list[str]) -> Any:
    return "*" if "*" in origins else origins


def _blocked_plugins(config: Config | Document | str | Path | None) -> list[str]:
    if isinstance(config, Config):
        return list(config.plugins.blocked)
    if not isinstance(config, Document):
        config = read_document(config or DEFAULT_CONFIG)
    section = config.data.get("plugins") or {}
    blocked = section.get("blocked") if isinstance(section, dict) else None
    return [str(b) for b in blocked] if isinstance(blocked, list) else []


# The status logged for a request whose client went away before its answer (nginx's).
CLIENT_GONE = 499
# A client's X-Request-ID is kept only when it is an id (it goes into logs and headers).
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", re.ASCII)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# The one HTML page (the API docs) is self-contained: an inline style, nothing else.
HTML_CSP = ("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'none'")


def _install_middleware(app: Quart, runtime: Runtime) -> None:
    metrics = runtime.metrics
    tracer = runtime.tracing

    @app.before_request
    async def begin() -> None:
        rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        g.stats = begin_request(rule)
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=g.request_id)
        if tracer is not None:
            g.server_span = tracer.begin_request(request.method, rule, request.headers,
                                                 g.request_id)

    @app.after_request
    async def finish(response: Any) -> Any:
        rid = getattr(g, "request_id", None)
        if rid:
            response.headers["X-Request-ID"] = rid
        response.headers.update(SECURITY_HEADERS)
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", HTML_CSP)
        view = app.view_functions.get(request.url_rule.endpoint) if request.url_rule else None
        stats: RequestStats | None = getattr(g, "stats", None)
        if stats is not None and stats.path in getattr(view, "lcore_deprecated_aliases", ()):
            response.headers["Deprecation"] = "true"
        status = response.status_code
        g.answered = True
        auth = getattr(g, "auth", None)
        user_id = auth.user_id if auth else None
        server_span = g.pop("server_span", None) if tracer is not None else None
        if stats is not None:
            metrics.rest_api_calls.labels(stats.path, str(status)).inc()
            if status in (400, 422):
                metrics.request_validation_errors.labels(stats.path).inc()
            line = {"method": request.method, "path": request.path, "status": status,
                    "user_id": user_id, "request_id": rid}
            if isinstance(response.response, IterableBody):
                # A stream is timed, logged and traced until its last event has gone out.
                stream_span, server_span = server_span, None

                def ended() -> None:
                    _request_done(metrics, stats, line, streamed=True)
                    if tracer is not None and stream_span is not None:
                        tracer.end_request(stream_span, status, user_id)

                response.response = IterableBody(timed_body(response.response.iter, ended))
            else:
                overhead = stats.freeze_overhead()  # the header and the histogram agree
                response.headers["X-LCore-Overhead-Ms"] = f"{overhead * 1000:.2f}"
                _request_done(metrics, stats, line, streamed=False)
        if tracer is not None and server_span is not None:
            tracer.end_request(server_span, status, user_id)
        structlog.contextvars.unbind_contextvars("request_id")
        return response

    @app.teardown_request
    async def unanswered(exc: BaseException | None) -> None:
        # A request that got no response (its client went away and the handler was cancelled)
        # still gets its log line, with nginx's 499 "client closed request", and ends its span.
        if g.get("answered"):
            return
        auth = getattr(g, "auth", None)
        stats: RequestStats | None = getattr(g, "stats", None)
        if stats is not None:
            # Logged, not timed: a cut request's duration would skew the latency histograms.
            log.info("request", method=request.method, path=request.path, status=CLIENT_GONE,
                     user_id=auth.user_id if auth else None,
                     request_id=getattr(g, "request_id", None),
                     duration_ms=round(stats.elapsed() * 1000, 2), streamed=False,
                     abandoned=True)
        server_span = g.pop("server_span", None) if tracer is not None else None
        if tracer is not None and server_span is not None:
            tracer.end_request(server_span, None, auth.user_id if auth else None)


def _request_done(metrics: CoreMetrics, stats: RequestStats, line: dict[str, Any], *,
                  streamed: bool) -> None:
    elapsed = observe_request(metrics, stats)
    extra = {"overhead_ms": round(stats.overhead() * 1000, 2)} if stats.llama_calls else {}
    log.info("request", **line, duration_ms=round(elapsed * 1000, 2), streamed=streamed,
             **stats.log_fields(), **extra)


async def _concurrently(*steps: Awaitable[None]) -> None:
    """Run independent start-up steps together; fail as running them in this order would.

    The steps are awaited in order, so the error raised is that of the first failed step in
    the given order, as it is (a failed start-up reports what it always did); the steps after
    it are then cancelled, and none is left running.
    """
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        for task in tasks:
            await task
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def startup_allowance(config: Config, base: float = 60.0) -> float:
    """How long start-up may take: `base` plus the worst case of the Llama Stack connection
    attempts (a server's start-up timeout must not cut them short)."""
    settings = config.llama_stack
    attempt = min(settings.timeout, CONNECT_ATTEMPT_TIMEOUT_S)
    return base + settings.max_retries * (attempt + settings.retry_delay)


async def _connect_llama(runtime: Runtime) -> None:
    """Start-up: reach Llama Stack (`max_retries` attempts, `retry_delay` s apart) and note its
    version; when it never answers, start degraded if `allow_degraded_mode`, else fail."""
    settings = runtime.config.llama_stack
    try:
        version = await runtime.llama.connect(settings.max_retries, settings.retry_delay)
    except BackendUnavailable as exc:
        if not settings.allow_degraded_mode:
            raise BackendUnavailable(exc.response, f"{exc.cause} (set llama_stack."
                                     "allow_degraded_mode: true to start anyway)") from exc
        # Queries answer 503 until Llama Stack is back; /readiness says "degraded" meanwhile.
        runtime.degraded = exc.cause
        runtime.metrics.started_degraded.set(1)
        log.error("starting in degraded mode: Llama Stack unreachable", error=exc.cause)
        return
    runtime.metrics.started_degraded.set(0)
    backend = await runtime.llama.ensure_backend(version)
    log.info("llama stack reachable", version=version, backend=backend,
             safety_api=runtime.llama.has_safety_api)


async def _publish_models(runtime: Runtime) -> None:
    """Set `ls_provider_model_configuration`; Llama Stack being down must not stop start-up."""
    from lcore_core.pipeline import list_models

    inference = runtime.config.inference
    try:
        models = await list_models(runtime)
    except Exception as exc:  # degraded start-up: the gauge stays empty
        log.warning("model list unavailable for metrics", error=type(exc).__name__)
        return
    runtime.metrics.set_models(models, (inference.default_provider or "",
                                        inference.default_model or ""))


def _install_error_handlers(app: Quart) -> None:
    @app.errorhandler(LCoreError)
    async def lcore_error(exc: LCoreError) -> Any:
        if exc.private:
            log.warning("request failed", status=exc.status, response=exc.response,
                        cause=exc.cause)
        response = jsonify(exc.body())
        response.status_code = exc.status
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        text = _HTTP_TEXT.get(status, exc.name)
        cause = exc.description or text
        if status == 413:
            cause = f"the body exceeds the limit of {app.config['MAX_CONTENT_LENGTH']} bytes"
        response = jsonify({"detail": {"response": text, "cause": cause}})
        response.status_code = status
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Any:
        log.error("unhandled error", error=type(exc).__name__,
                  trace="".join(traceback.format_exception(exc)))
        response = jsonify({"detail": {"response": "Internal server error",
                                       "cause": f"unexpected {type(exc).__name__}; see the "
                                                f"service log (request id "
                                                f"{getattr(g, 'request_id', '?')})"}})
        response.status_code = 500
        return response
