"""The plugin manager and a typed facade over `pm.hook`."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from lcore_core import hookspecs, tracing
from lcore_core.errors import ConfigError, PluginLoadError

if TYPE_CHECKING:
    from quart import Blueprint, Request

    from lcore_core.auth import AuthTuple
    from lcore_core.config import Config
    from lcore_core.events import QueryCompleted, QuotaTicket, Usage
    from lcore_core.metrics import MetricsRegistry
    from lcore_core.providers import (
        AuthProvider,
        CacheBackend,
        ConfigSection,
        ReadinessCheck,
        UpstreamImporter,
    )
    from lcore_core.runtime import Runtime

log = logging.getLogger("lcore.plugins")

# The core's own providers, registered through the same manager as any installed plugin.
DEFAULT_PLUGINS = ("lcore_core.builtins", "lcore_core.rlsapi.plugin")
CORE_DISTRIBUTION = "lcore-core"


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Plugins:
    """One per app: discovers plugins and calls hooks with types."""

    def __init__(self, *, blocked: Iterable[str] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        for name in blocked:
            self.pm.set_blocked(name)
        self.failures: list[PluginLoadError] = []
        self._dists: dict[str, tuple[str, str]] = {}
        if os.environ.get("LCORE_TRACE_HOOKS"):
            self.pm.trace.root.setwriter(lambda msg: log.debug("hook %s", msg.rstrip()))
            self.pm.enable_tracing()

    # --- registration --------------------------------------------------------------------

    def register(self, plugin: Any, name: str | None = None, *,
                 distribution: str = "(runtime)") -> str | None:
        registered = self.pm.register(plugin, name)
        if registered is not None:
            self._dists[registered] = (distribution, "")
        return registered

    def load_defaults(self) -> None:
        version = _dist_version(CORE_DISTRIBUTION)
        for module_name in DEFAULT_PLUGINS:
            module = __import__(module_name, fromlist=["_"])
            if self.pm.is_blocked(module_name):
                continue
            self.pm.register(module, module_name)
            self._dists[module_name] = (CORE_DISTRIBUTION, version)

    def load_entrypoints(self) -> None:
        """Load every `lcore` entry point; a broken one is recorded, the others still load."""
        for ep in metadata.entry_points(group=hookspecs.PROJECT):
            if self.pm.is_blocked(ep.name) or self.pm.get_plugin(ep.name) is not None:
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else ""
            try:
                plugin = ep.load()
                self.pm.register(plugin, ep.name)
            except Exception as exc:  # any import-time failure of a third-party plugin
                failure = PluginLoadError(ep.name, dist, exc)
                log.error("%s", failure)
                self.failures.append(failure)
                continue
            self._dists[ep.name] = (dist, version)

    def check(self) -> None:
        """Fail on hook implementations that match no spec (a misspelt hook name)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"invalid plugin: {exc}", key="plugins") from exc

    def distribution_of(self, plugin_name: str) -> str:
        return self._dists.get(plugin_name, ("?", ""))[0]

    def describe(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            dist, version = self._dists.get(name, ("?", ""))
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            infos.append(PluginInfo(name, dist, version, hooks))
        for failure in self.failures:
            infos.append(PluginInfo(failure.plugin, failure.distribution, "",
                                    error=f"{type(failure.error).__name__}: {failure.error}"))
        return infos

    # --- collected registrations ----------------------------------------------------------

    def _collect(self, hook: pluggy.HookCaller, kind: str, **kwargs: Any) -> dict[str, Any]:
        """Call a registration hook per implementation; entries keyed by name, with their plugin."""
        found: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for impl in reversed(hook.get_hookimpls()):
            result: Any = impl.function(*[kwargs[a] for a in impl.argnames])
            for entry in result or ():
                if entry.name in found:
                    raise ConfigError(
                        f"{kind} {entry.name!r} is registered twice: by plugin "
                        f"{owners[entry.name]!r} and by plugin {impl.plugin_name!r}",
                        key="plugins",
                    )
                found[entry.name] = entry
                owners[entry.name] = impl.plugin_name
        self._owners = getattr(self, "_owners", {})
        self._owners.update({(kind, n): p for n, p in owners.items()})
        return found

    def owner(self, kind: str, name: str) -> str:
        """The plugin name that registered provider `name` of `kind`."""
        return getattr(self, "_owners", {}).get((kind, name), "?")

    def auth_providers(self) -> dict[str, AuthProvider]:
        return self._collect(self.pm.hook.lcore_auth_providers, "auth provider")

    def cache_backends(self) -> dict[str, CacheBackend]:
        return self._collect(self.pm.hook.lcore_cache_backends, "cache backend")

    def config_sections(self) -> dict[str, ConfigSection]:
        return self._collect(self.pm.hook.lcore_config_sections, "config section")

    def upstream_importers(self, config: Config) -> dict[str, UpstreamImporter]:
        return self._collect(self.pm.hook.lcore_upstream_importers, "upstream importer",
                             config=config)

    def actions(self) -> set[str]:
        names: set[str] = set()
        for result in self.pm.hook.lcore_actions():
            names.update(str(a) for a in result or ())
        return names

    def blueprints(self, config: Config) -> list[Blueprint]:
        results = self.pm.hook.lcore_blueprints(config=config)
        return [bp for result in results for bp in result or ()]

    def register_metrics(self, registry: MetricsRegistry, config: Config) -> None:
        """One plugin at a time, so that a collector name clash names both plugins."""
        args = {"registry": registry, "config": config}
        core = registry.owner
        try:
            for impl in reversed(self.pm.hook.lcore_metrics.get_hookimpls()):
                registry.owner = impl.plugin_name
                impl.function(*[args[a] for a in impl.argnames])
        finally:
            registry.owner = core

    def cli_commands(self, subparsers: Any) -> None:
        self.pm.hook.lcore_cli_commands(subparsers=subparsers)

    def readiness(self, runtime: Runtime) -> list[ReadinessCheck]:
        return [c for result in self.pm.hook.lcore_readiness(runtime=runtime) for c in result or ()]

    # --- lifecycle ------------------------------------------------------------------------

    async def startup(self, runtime: Runtime) -> None:
        for impl in reversed(self.pm.hook.lcore_startup.get_hookimpls()):
            await _resolve(impl.function(*[{"runtime": runtime}[a] for a in impl.argnames]))

    async def shutdown(self, runtime: Runtime) -> None:
        for impl in self.pm.hook.lcore_shutdown.get_hookimpls():
            try:
                await _resolve(impl.function(*[{"runtime": runtime}[a] for a in impl.argnames]))
            except Exception:
                log.exception("shutdown hook of plugin %s failed", impl.plugin_name)

    # --- decisions --------------------------------------------------------------------------

    def authorize(self, auth: AuthTuple, action: str, request: Request | None) -> bool:
        return bool(self.pm.hook.lcore_authorize(auth=auth, action=action, request=request))

    async def _each(self, hook: pluggy.HookCaller, **kwargs: Any) -> list[Any]:
        """Call and await one implementation at a time, in pluggy's order.

        Calling them all first (`pm.hook...`) would leave the later coroutines un-awaited when an
        earlier one raises.
        """
        results = []
        for impl in reversed(hook.get_hookimpls()):
            results.append(await _resolve(impl.function(*[kwargs[a] for a in impl.argnames])))
        return results

    async def quota_check(self, auth: AuthTuple, ticket: QuotaTicket, runtime: Runtime) -> None:
        with tracing.span("lcore.quota.check", {"enduser.id": auth.user_id}):
            await self._each(self.pm.hook.lcore_quota_check, auth=auth, ticket=ticket,
                             runtime=runtime)

    async def quota_consume(self, auth: AuthTuple, usage: Usage, ticket: QuotaTicket,
                            runtime: Runtime) -> None:
        with tracing.span("lcore.quota.consume", {"enduser.id": auth.user_id}):
            await self._each(self.pm.hook.lcore_quota_consume, auth=auth, usage=usage,
                             ticket=ticket, runtime=runtime)

    async def quota_release(self, auth: AuthTuple, ticket: QuotaTicket,
                            runtime: Runtime) -> None:
        """Refund reservations; every plugin is asked even if one fails."""
        with tracing.span("lcore.quota.release", {"enduser.id": auth.user_id}):
            for impl in reversed(self.pm.hook.lcore_quota_release.get_hookimpls()):
                args = {"auth": auth, "ticket": ticket, "runtime": runtime}
                try:
                    await _resolve(impl.function(*[args[a] for a in impl.argnames]))
                except Exception:
                    log.exception("lcore_quota_release of plugin %s failed", impl.plugin_name)

    async def quota_status(self, auth: AuthTuple, runtime: Runtime) -> dict[str, int]:
        status: dict[str, int] = {}
        for result in await self._each(self.pm.hook.lcore_quota_status, auth=auth,
                                       runtime=runtime):
            status.update(result or {})
        return status

    def mcp_header_value(self, spec: str, server: Any, header: str, auth: AuthTuple,
                         client_headers: dict[str, str]) -> str | None:
        return self.pm.hook.lcore_mcp_header_value(
            spec=spec, server=server, header=header, auth=auth, client_headers=client_headers
        )

    async def query_completed(self, event: QueryCompleted, runtime: Runtime) -> None:
        for impl in self.pm.hook.lcore_query_completed.get_hookimpls():
            try:
                args = {"event": event, "runtime": runtime}
                await _resolve(impl.function(*[args[a] for a in impl.argnames]))
            except Exception:
                log.exception("lcore_query_completed of plugin %s failed", impl.plugin_name)


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "dev"


def load_plugins(*, entrypoints: bool = True, blocked: Iterable[str] = (),
                 extra: Iterable[ModuleType | object] = ()) -> Plugins:
    """A fresh manager with the built-ins, the installed plugins and any `extra` ones."""
    plugins = Plugins(blocked=blocked)
    plugins.load_defaults()
    if entrypoints:
        plugins.load_entrypoints()
    for plugin in extra:
        plugins.register(plugin, distribution="(given)")
    plugins.check()
    return plugins
