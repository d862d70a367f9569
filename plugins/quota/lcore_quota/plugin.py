"""Hook implementations of lcore-quota: token quotas per user and per cluster.

The plugin does nothing until `quota_handlers.limiters` lists a limiter. The running service's
`Quota` is `runtime.state["lcore-quota"]`, its scheduler `runtime.state["lcore-quota.scheduler"]`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lcore_core import ConfigSection, LCoreError, ReadinessCheck, UpstreamImporter, hookimpl
from lcore_quota import cli
from lcore_quota.config import QuotaHandlersSchema
from lcore_quota.metrics import QuotaMetrics
from lcore_quota.migrate import import_quota
from lcore_quota.quota import Quota
from lcore_quota.scheduler import Scheduler
from lcore_quota.store import Limiter
from lcore_quota.web import STATE_KEY, blueprint

if TYPE_CHECKING:
    import argparse

    from prometheus_client import CollectorRegistry
    from quart import Blueprint

    from lcore_core import AuthTuple, Config, QuotaTicket, Runtime, Usage

SCHEDULER_KEY = "lcore-quota.scheduler"
log = logging.getLogger("lcore.quota")


def _settings(config: Config) -> Any:
    settings = config.get("quota_handlers")
    return settings if settings and settings.get("limiters") else None


def _quota(runtime: Runtime) -> Quota | None:
    return runtime.state.get(STATE_KEY)


@hookimpl
def lcore_config_sections() -> list[ConfigSection]:
    return [ConfigSection("quota_handlers", QuotaHandlersSchema,
                          "token quotas per user and per cluster (lcore-quota)")]


@hookimpl
def lcore_metrics(registry: CollectorRegistry, config: Config) -> None:
    settings = _settings(config)
    if settings is not None:
        QuotaMetrics(registry, [Limiter.from_settings(s) for s in settings["limiters"]])


@hookimpl
def lcore_blueprints(config: Config) -> list[Blueprint]:
    return [blueprint()] if _settings(config) is not None else []


@hookimpl
def lcore_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    cli.add_commands(subparsers)


@hookimpl
def lcore_upstream_importers(config: Config) -> list[UpstreamImporter]:
    if _settings(config) is None:
        return []
    return [UpstreamImporter("quota", "quota_handlers", import_quota)]


@hookimpl
async def lcore_startup(runtime: Runtime) -> None:
    settings = _settings(runtime.config)
    if settings is None:
        return
    quota = Quota(settings, metrics=QuotaMetrics.of(runtime.registry), storage=runtime.storage)
    scheduler_settings = settings["scheduler"]
    # A database still down after the retries does not stop the service: quota calls answer
    # 503 (fail closed) and the scheduler keeps trying until it is back.
    await quota.setup(attempts=scheduler_settings["database_reconnection_count"],
                      delay_s=scheduler_settings["database_reconnection_delay"])
    scheduler = Scheduler(quota, scheduler_settings["period"])
    runtime.state[STATE_KEY] = quota
    runtime.state[SCHEDULER_KEY] = scheduler
    scheduler.start()


@hookimpl
async def lcore_shutdown(runtime: Runtime) -> None:
    scheduler: Scheduler | None = runtime.state.pop(SCHEDULER_KEY, None)
    if scheduler is not None:
        await scheduler.stop()
    quota = runtime.state.pop(STATE_KEY, None)
    if quota is not None:
        await quota.close()


@hookimpl
def lcore_readiness(runtime: Runtime) -> list[ReadinessCheck]:
    quota = _quota(runtime)
    return [ReadinessCheck("quota-database", quota.ready)] if quota is not None else []


@hookimpl
async def lcore_quota_check(auth: AuthTuple, ticket: QuotaTicket, runtime: Runtime) -> None:
    quota = _quota(runtime)
    if quota is not None:
        await quota.check(auth, ticket)


@hookimpl
async def lcore_quota_consume(auth: AuthTuple, usage: Usage, ticket: QuotaTicket,
                              runtime: Runtime) -> None:
    quota = _quota(runtime)
    if quota is not None:
        await quota.consume(auth, usage, ticket)


@hookimpl
async def lcore_quota_release(ticket: QuotaTicket, runtime: Runtime) -> None:
    quota = _quota(runtime)
    if quota is not None:
        await quota.release(ticket)


@hookimpl
async def lcore_quota_status(auth: AuthTuple, runtime: Runtime) -> dict[str, int]:
    quota = _quota(runtime)
    if quota is None:
        return {}
    try:
        # Right after the consume: the settlement's own figures, when this task made it.
        return {s.limiter.name: s.available for s in await quota.latest_states(auth.user_id)}
    except LCoreError as exc:  # informational: the answer is already paid for, give it without
        log.warning("available quotas unknown: %s", exc.cause)
        return {}
