"""The hooks a plugin can implement. These docstrings are the plugin author's manual.

A plugin is a module (or object) with functions decorated by `lcore_core.hookimpl` and named after
the specs below. Ship it in a distribution that declares an entry point in the group `lcore`:

    [project.entry-points.lcore]
    myplugin = "my_package.plugin"

Implementations declare only the arguments they use. Hooks marked *may be async* accept an
`async def` implementation: the core awaits whatever it returns. Registration hooks are
synchronous. `runtime` is the running service (`lcore_core.Runtime`): its `config`, `plugins`,
`metrics` registry, `llama` client, `cache`, and a `state` dict for plugin data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from prometheus_client import CollectorRegistry
    from quart import Blueprint, Request

    from lcore_core.auth import AuthTuple
    from lcore_core.config import Config
    from lcore_core.events import QueryCompleted, QuotaTicket, Usage
    from lcore_core.providers import (
        AuthProvider,
        CacheBackend,
        ConfigSection,
        ReadinessCheck,
        UpstreamImporter,
    )
    from lcore_core.runtime import Runtime

PROJECT = "lcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration ---------------------------------------------------------------------------


@hookspec
def lcore_config_sections() -> Iterable[ConfigSection]:
    """Return the top-level sections of lightspeed-stack.yaml this plugin owns.

    Each `ConfigSection(name, schema)` gives a marshmallow schema; the core validates the section
    with it (errors name file, line and key) and exposes the loaded mapping as `config[name]`.
    A section present in the file whose owner is not installed is refused at start-up.
    """


@hookspec
def lcore_auth_providers() -> Iterable[AuthProvider]:
    """Return authentication modules this plugin provides.

    `AuthProvider(name, factory, config_key, schema)`: `authentication.module: <name>` selects it;
    `authentication.<config_key>` is validated with `schema` and passed to `factory(settings,
    config)`, which returns an object with `async authenticate(request) -> AuthTuple`.
    """


@hookspec
def lcore_cache_backends() -> Iterable[CacheBackend]:
    """Return conversation cache backends this plugin provides.

    `CacheBackend(name, factory, config_key, schema)`: `conversation_cache.type: <name>` selects
    it; `factory(settings, config)` returns a `ConversationCache`.
    """


@hookspec
def lcore_actions() -> Iterable[str]:
    """Return extra authorization action names (e.g. `a2a_jsonrpc`) usable in access rules."""


@hookspec
def lcore_blueprints(config: Config) -> Iterable[Blueprint]:
    """Return Quart blueprints with extra routes; they go through the same error handling.

    `config` is the loaded configuration (return nothing to add no routes). Views protect themselves
    with `lcore_core.authorize(action)`; document a view for the OpenAPI document with
    `lcore_core.doc(...)`.
    """


@hookspec
def lcore_metrics(registry: CollectorRegistry, config: Config) -> None:
    """Register this plugin's Prometheus collectors on `registry` (one registry per app).

    `config` is the loaded configuration. Called once per app, before serving; return nothing.
    A name already registered (by the core or another plugin) fails start-up naming both plugins.
    With several workers, pick a gauge's `multiprocess_mode` (see docs/metrics.md).
    """


@hookspec
def lcore_readiness(runtime: Runtime) -> Iterable[ReadinessCheck]:
    """Return readiness checks (name + async check) that `GET /readiness` runs.

    `runtime` is the running service. Each check returns None when ready and a reason (or
    raises) when not; the failing check's name is reported and the answer is 503.
    """


@hookspec
def lcore_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `lcore` subcommands (e.g. `lcore quota ...`). Synchronous; return nothing.

    `subparsers` is the top-level `argparse` sub-parser collection: call
    `subparsers.add_parser(name, ...)` and `set_defaults(handler=fn)` on the new parser, where
    `fn(args) -> int` runs the command and returns the exit status. `args.config` holds the
    `-c/--config` path when the parser declares it (`lcore_core.cli.config_arg(parser)`).
    """


@hookspec
def lcore_upstream_importers(config: Config) -> Iterable[UpstreamImporter]:
    """Return importers of upstream Lightspeed Core Stack data into this plugin's stores.

    Called by `lcore migrate --from-upstream` (see docs/migrate.md) with `config`, LCore's
    configuration: return an importer only for a store it selects (e.g. the cache backend
    `conversation_cache.type` names). `UpstreamImporter(name, section, run)`: `section` is the
    section of upstream's configuration that says where the data is; the core awaits
    `run(migration)` (a `lcore_core.Migration`), which reads `migration.upstream(section)`
    (`await upstream.has(table)`, `async for row in upstream.rows(table, order_by)`),
    writes unless `migration.dry_run`, leaves a row LCore already has as it is, and counts every
    upstream row as imported or skipped (with the reason) in `migration.table(...)`. Raise
    `MigrationError` for what stops it (a missing table). Upstream data no importer claims is
    reported as skipped.
    """


# --- lifecycle ------------------------------------------------------------------------------


@hookspec
def lcore_startup(runtime: Runtime) -> Any:
    """Called once before serving, after the core's own start-up. May be async.

    `runtime` is the running service. A stateful plugin builds its objects here and keeps them in
    `runtime.state`, or registers an object with hook implementations via
    `runtime.plugins.register(obj)`. Raising stops start-up.
    """


@hookspec
def lcore_shutdown(runtime: Runtime) -> Any:
    """Called once at shutdown with the same `runtime`. May be async.

    Close what you opened; errors are logged, and the other plugins still shut down.
    """


# --- authorization --------------------------------------------------------------------------


@hookspec(firstresult=True)
def lcore_authorize(auth: AuthTuple, action: str, request: Request | None) -> bool | None:
    """Decide whether `auth` may perform `action`. Synchronous.

    `request` is the current Quart request (None outside a request). Return True (allow), False
    (deny) or None (no opinion: the next implementation decides). The first non-None answer wins;
    the core's RBAC resolver (`authorization.access_rules`) runs last.
    """


# --- quota ----------------------------------------------------------------------------------


@hookspec
def lcore_quota_check(auth: AuthTuple, ticket: QuotaTicket, runtime: Runtime) -> Any:
    """Called before every LLM call made for `auth`. May be async.

    Raise `QuotaExceeded` to refuse it (429); return None to let it through. To avoid the
    check-then-charge race, reserve an estimate here and note it in `ticket.reservations`; the
    same `ticket` comes back to `lcore_quota_consume` or `lcore_quota_release`. `runtime` is the
    running service.
    """


@hookspec
def lcore_quota_consume(auth: AuthTuple, usage: Usage, ticket: QuotaTicket,
                        runtime: Runtime) -> Any:
    """Called after a successful LLM call only, with its token `usage`. May be async.

    `auth` is the caller, `ticket` the one given to the check (settle the reservation to the real
    usage), `runtime` the running service. Never called when the call failed or a stream was cut.
    A topic summary's share of its call comes with a fresh ticket (`endpoint` "topic_summary")
    that no check reserved for.
    """


@hookspec
def lcore_quota_release(auth: AuthTuple, ticket: QuotaTicket, runtime: Runtime) -> Any:
    """Called instead of consume when the LLM call failed or the stream was cut. May be async.

    `auth` is the caller, `ticket` the one given to the check: refund what it reserved, so
    nothing is spent for nothing. `runtime` is the running service.
    """


@hookspec
def lcore_quota_status(auth: AuthTuple, runtime: Runtime) -> Any:
    """Return (or, async, resolve to) `{limiter_name: available_tokens}` for `available_quotas`.

    `auth` is the caller, `runtime` the running service. The dicts of all plugins are merged.
    """


# --- MCP --------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def lcore_mcp_header_value(
    spec: str, server: Any, header: str, auth: AuthTuple, client_headers: dict[str, str]
) -> str | None:
    """Resolve one configured MCP authorization header value for one request. Synchronous.

    `spec` is the configured source (a file path, `${env.VAR}` result, a literal, `client`,
    `kubernetes`, or a kind a plugin defines); `server` is the MCP server's config; `header` the
    header name; `auth` the caller; `client_headers` the caller's `MCP-HEADERS` entry for this
    server. Return the value, or None to let the next implementation try. Never log the value.
    """


# --- observation ------------------------------------------------------------------------------


@hookspec
def lcore_query_completed(event: QueryCompleted, runtime: Runtime) -> Any:
    """Called after each query (success or failure). May be async.

    `event` says who, which model, tokens, duration and shield outcome; `runtime` is the running
    service. For metrics, usage history and audit; exceptions are logged, not raised.
    """
