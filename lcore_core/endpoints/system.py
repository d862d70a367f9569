"""Liveness, readiness, info, metrics and the API document."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, current_app, jsonify

from lcore_core import __version__
from lcore_core.auth import Action, authorize
from lcore_core.errors import PRIVATE_CAUSE
from lcore_core.metrics import render
from lcore_core.openapi import build_openapi, render_docs
from lcore_core.schemas import InfoSchema, LivenessSchema, ReadinessSchema
from lcore_core.web import doc, route

log = structlog.get_logger("lcore.system")
bp = Blueprint("system", __name__)
READINESS_TIMEOUT_S = 5.0
# What a service started without Llama Stack cannot do (upstream's wording).
DEGRADED_IMPACTS = ["LLM inference unavailable", "RAG functionality unavailable",
                    "Agent tools unavailable"]
# What a service that has lost Llama Stack cannot do (upstream's wording).
BACKEND_DOWN_IMPACTS = ["LLM inference unavailable", "Provider health checks unavailable"]


def _runtime() -> Any:
    return current_app.runtime  # type: ignore[attr-defined]


def _skip_probes() -> bool:
    return bool(_runtime().config.authentication.skip_for_health_probes)


def _skip_metrics() -> bool:
    return bool(_runtime().config.authentication.skip_for_metrics)


@route(bp, "/health", "/liveness", "/v1/liveness")
@doc(summary="Liveness: the process answers", tags=["health"], responses={200: LivenessSchema})
@authorize(Action.INFO, skip=_skip_probes)
async def liveness() -> Any:
    return jsonify({"alive": True})


async def _run_check(name: str, check: Any) -> dict[str, Any]:
    try:
        reason = await asyncio.wait_for(check(), READINESS_TIMEOUT_S)
    except TimeoutError:
        reason = f"no answer within {READINESS_TIMEOUT_S:g}s"
    except Exception as exc:  # a failing component is reported, never raised
        # The probe may be unauthenticated: a driver's message (hosts, ports) stays in the log.
        log.warning("readiness check failed", check=name, error=f"{type(exc).__name__}: {exc}")
        reason = f"{type(exc).__name__}; {PRIVATE_CAUSE}"
    status = "ok" if reason is None else "error"
    return {"provider_id": name, "status": status, "message": reason}


@route(bp, "/readiness", "/v1/readiness")
@doc(summary="Readiness: every component can serve", tags=["health"],
     responses={200: ReadinessSchema, 503: ReadinessSchema})
@authorize(Action.INFO, skip=_skip_probes)
async def readiness() -> Any:
    runtime = _runtime()
    checks = [("cache", _cache_check(runtime)), *((c.name, c.check)
                                                   for c in runtime.plugins.readiness(runtime))]
    results = await asyncio.gather(*(_run_check(n, c) for n, c in checks))
    failing = [r for r in results if r["status"] != "ok"]
    if failing and runtime.degraded is not None and \
            all(r["provider_id"] == "llama-stack" for r in failing):
        # Started without Llama Stack (allow_degraded_mode): ready, as upstream, with what is
        # missing said; once Llama Stack answers, the plain report below comes back.
        return jsonify({"ready": True, "reason": "Service running in degraded mode",
                        "overall_status": "degraded", "impacts": DEGRADED_IMPACTS,
                        "providers": results})
    # upstream's reason and impact texts; `providers` lists every component checked (upstream:
    # only the failing ones), so an operator sees what was asked
    impacts = [f"Provider {r['provider_id']}: {r['message']}" for r in failing
               if r["provider_id"] != "llama-stack"]
    if len(impacts) < len(failing):
        reason = "Cannot connect to backend service"
        impacts = [*BACKEND_DOWN_IMPACTS, *impacts]
    else:
        reason = "Providers not healthy: " + ", ".join(r["provider_id"] for r in failing)
    body = {"ready": not failing,
            "reason": reason if failing else "All providers are healthy",
            "overall_status": "unhealthy" if failing else "healthy",
            "impacts": impacts or None,
            "providers": results}
    response = jsonify(body)
    response.status_code = 503 if failing else 200
    return response


def _cache_check(runtime: Any) -> Any:
    async def check() -> None:
        await runtime.cache.ready()

    return check


@route(bp, "/v1/info", "/info")
@doc(summary="Service name, version and plugins", tags=["info"],
     responses={200: InfoSchema, 503: "Llama Stack unavailable"})
@authorize(Action.INFO)
async def info() -> Any:
    runtime = _runtime()
    plugins = [
        {"name": p.name, "distribution": p.distribution, "version": p.version,
         "hooks": p.hooks, "error": p.error}
        for p in runtime.plugins.describe()
    ]
    # Asked now, as upstream does: 503 when Llama Stack cannot say.
    version = await runtime.llama.version()
    return jsonify({"name": runtime.config.name, "service_version": __version__,
                    "llama_stack_version": version, "plugins": plugins})


@route(bp, "/metrics", "/v1/metrics")
@doc(summary="Prometheus metrics", tags=["metrics"], responses={200: "Prometheus text format"})
@authorize(Action.GET_METRICS, skip=_skip_metrics)
async def metrics() -> Any:
    return Response(render(_runtime().registry), content_type=CONTENT_TYPE_LATEST)


INDEX_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;text-align:center;margin-top:4em}}</style></head>
<body><h1>{title}</h1><p>LCore {version}</p>
<p><a href="docs">API documentation</a> &middot; <a href="openapi.json">OpenAPI document</a></p>
</body></html>"""


@route(bp, "/")
@doc(summary="Index page: the service's name and links to its API documentation",
     tags=["root"], responses={200: "HTML page"})
@authorize(Action.INFO)
async def index() -> Any:
    from html import escape

    page = INDEX_PAGE.format(title=escape(_runtime().config.name), version=__version__)
    return Response(page, content_type="text/html; charset=utf-8")


@bp.route("/openapi.json")
async def openapi() -> Any:
    runtime = _runtime()
    cached = runtime.state.get("openapi")
    if cached is None:
        cached = build_openapi(current_app, title=runtime.config.name, version=__version__,
                               root_path=runtime.config.service.root_path)
        runtime.state["openapi"] = cached
    return jsonify(cached)


@bp.route("/docs")
async def docs() -> Any:
    document = await (await openapi()).get_json()
    return Response(render_docs(document), content_type="text/html; charset=utf-8")
