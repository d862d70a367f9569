"""Records that plugins return from registration hooks."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from marshmallow import Schema

    from lcore_core.auth import Authenticator
    from lcore_core.cache import ConversationCache
    from lcore_core.config import Config


@dataclass(frozen=True)
class AuthProvider:
    """An authentication module, selected by `authentication.module: <name>`.

    `factory(settings, config)` builds the authenticator; `settings` is the validated
    `authentication.<config_key>` mapping (None when absent), `config` the whole configuration.
    `access_rules` says whether `authorization.access_rules` judge this module's callers: True
    (the default), False (every action is allowed, as upstream does for `noop` or `k8s`), or a
    callable of `settings` deciding it (`jwk-token` applies them only with role rules).
    `authorization.always_apply_access_rules: true` applies them whatever this says.
    """

    name: str
    factory: Callable[[Any, Config], Authenticator]
    config_key: str | None = None
    schema: type[Schema] | None = None
    required: bool = False
    description: str = ""
    access_rules: bool | Callable[[Any], bool] = True

    def applies_access_rules(self, settings: Any) -> bool:
        rule = self.access_rules
        return bool(rule(settings) if callable(rule) else rule)


@dataclass(frozen=True)
class CacheBackend:
    """A conversation cache, selected by `conversation_cache.type: <name>`.

    `factory(settings, config)` builds the cache; `settings` is the validated
    `conversation_cache.<config_key or name>` mapping (None when absent). A factory that also
    takes `storage` gets the runtime's `lcore_core.Storage`, to open its Database there (shared
    with the other stores on the same place, closed by the core).
    """

    name: str
    factory: Callable[[Any, Config], ConversationCache]
    config_key: str | None = None
    schema: type[Schema] | None = None
    required: bool = False
    description: str = ""

    @property
    def key(self) -> str:
        return self.config_key or self.name

    def build(self, settings: Any, config: Config, storage: Any = None) -> ConversationCache:
        """The cache, from `factory` (given `storage` when it takes one)."""
        if storage is not None and "storage" in inspect.signature(self.factory).parameters:
            return self.factory(settings, config, storage=storage)  # type: ignore[call-arg]
        return self.factory(settings, config)


@dataclass(frozen=True)
class ConfigSection:
    """A top-level section of lightspeed-stack.yaml owned by a plugin."""

    name: str
    schema: type[Schema]
    description: str = ""


@dataclass(frozen=True)
class ReadinessCheck:
    """A named async check; it returns None when ready and raises (or returns a reason) if not."""

    name: str
    check: Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class UpstreamImporter:
    """Imports one kind of upstream Lightspeed Core Stack data for `lcore migrate`.

    `section` is the section of upstream's configuration whose database it reads
    (`conversation_cache`, `quota_handlers`, `a2a_state`); `run(migration)` (async: upstream's
    reads are awaited) reads it through `migration.upstream(section)`, writes into the
    plugin's own store unless `migration.dry_run`, and counts every row in
    `migration.table(...)`.
    """

    name: str
    section: str
    run: Callable[[Any], Any]
