"""The rlsapi built-in plugin: the `/v1/infer` route and the Splunk HEC exporter's lifecycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from lcore_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from quart import Blueprint

    from lcore_core.config import Config
    from lcore_core.runtime import Runtime

log = structlog.get_logger("lcore.rlsapi")


def _splunk(config: Config) -> Any:
    settings = config.get("splunk")
    return settings if settings and settings.get("enabled") else None


@hookimpl
def lcore_blueprints(config: Config) -> list[Blueprint]:
    from lcore_core.rlsapi.endpoint import bp

    return [bp]


@hookimpl
def lcore_metrics(registry: CollectorRegistry, config: Config) -> None:
    if _splunk(config) is not None:
        from lcore_core.rlsapi.splunk import register_metrics

        register_metrics(registry)


@hookimpl
def lcore_startup(runtime: Runtime) -> None:
    config = runtime.config
    subject = (config.get("rlsapi_v1") or {}).get("quota_subject")
    quota = config.get("quota_handlers") or {}
    if subject and not quota.get("limiters"):
        log.warning("rlsapi_v1.quota_subject is set but no quota limiter is configured: "
                    "/v1/infer is not metered", quota_subject=subject)
    settings = _splunk(config)
    if settings is None:
        return
    from lcore_core.rlsapi.endpoint import SPLUNK_STATE
    from lcore_core.rlsapi.splunk import SplunkExporter

    exporter = SplunkExporter(settings, runtime.registry)
    exporter.start()
    runtime.state[SPLUNK_STATE] = exporter
    log.info("splunk HEC export on", url=settings["url"], index=settings["index"])


@hookimpl
async def lcore_shutdown(runtime: Runtime) -> None:
    from lcore_core.rlsapi.endpoint import SPLUNK_STATE

    exporter = runtime.state.pop(SPLUNK_STATE, None)
    if exporter is not None:
        await exporter.close()
