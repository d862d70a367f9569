"""The running service's shared objects, reachable as `app.runtime` (and by every hook)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from quart import Quart

    from lcore_core.auth import Authenticator
    from lcore_core.cache import ConversationCache
    from lcore_core.config import Config
    from lcore_core.metrics import CoreMetrics
    from lcore_core.plugins import Plugins
    from lcore_core.storage import Storage
    from lcore_core.tracing import Tracing

T = TypeVar("T")


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
    # The databases of every store: one per configured place, shared, so a section's
    # `max_connections` bounds the process's connections to it.
    storage: Storage | None = None
    # Saved prompts (lcore_core.saved_prompts.SavedPrompts), on the user DB's database.
    saved_prompts: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    # Set when shutdown's grace period is over: open streams end at their next event.
    cutting_streams: bool = False
    # Which MCP servers answer (lcore_core.mcp.McpHealth), when any is configured.
    mcp_health: Any = None
    # The MCP servers a query offers (lcore_core.mcp_registry.McpRegistry): configured ones
    # and those registered at run time through /v1/mcp-servers.
    mcp: Any = None
    # Live streaming queries an owner may interrupt (lcore_core.interrupts.LiveStreams).
    streams: Any = None
    # This app's OpenTelemetry tracer when `service.tracing.enabled` (lcore_core.tracing).
    tracing: Tracing | None = None
    # Why the service started without Llama Stack (`llama_stack.allow_degraded_mode`), else None.
    degraded: str | None = None
    # Topic summaries of new conversations (lcore_core.summaries.TopicSummaries).
    summaries: Any = None

    def mcp_servers(self) -> list[Any]:
        """Every MCP server a query may offer (read on each call: registrations come and go)."""
        return self.mcp.servers() if self.mcp is not None else list(self.config.mcp_servers)

    async def cached(self, key: str, seconds: float, fetch: Callable[[], Awaitable[T]]) -> T:
        """`await fetch()`, kept in `state[key]` for `seconds` (Llama Stack's lists, which the
        query path reads on every query). `state.pop(key)` makes the next call fetch again."""
        hit = self.state.get(key)
        if hit and time.monotonic() - hit[0] < seconds:
            return hit[1]  # type: ignore[no-any-return]
        value = await fetch()
        self.state[key] = (time.monotonic(), value)
        return value

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `work` after the response (e.g. a topic summary); shutdown waits for it.

        It runs in a fresh context, so it is not counted as part of the request that spawned it
        (only the request's trace goes with it, so its spans join that trace).
        """
        from lcore_core.tracing import background_context

        task = asyncio.get_running_loop().create_task(work, context=background_context())
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` seconds for background work, then cancel what is left."""
        if self.summaries is not None:
            await self.summaries.drain(timeout)
        pending = set(self.background)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
