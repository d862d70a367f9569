"""The running service's shared objects, reachable as `app.runtime` (and by every hook)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from quart import Quart

    from lcore_core.auth import Authenticator
    from lcore_core.cache import ConversationCache
    from lcore_core.config import Config
    from lcore_core.metrics import CoreMetrics
    from lcore_core.plugins import Plugins


@dataclass
class Runtime:
    config: Config
    plugins: Plugins
    registry: CollectorRegistry
    metrics: CoreMetrics
    authenticator: Authenticator
    cache: ConversationCache
    app: Quart | None = None
    llama: Any = None
    userdb: Any = None
    state: dict[str, Any] = field(default_factory=dict)
