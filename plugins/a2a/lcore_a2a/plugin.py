"""Hook implementations of lcore-a2a: the A2A routes, their actions, `a2a_state`, the store.

The running service's `A2AService` (context store, tasks running here) is
`runtime.state["lcore-a2a"]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from lcore_a2a.agent import A2AService
from lcore_a2a.card import build_card
from lcore_a2a.config import A2AStateSchema
from lcore_a2a.jsonrpc import describe
from lcore_a2a.migrate import import_a2a
from lcore_a2a.store import MemoryStore, open_store
from lcore_a2a.web import ACTIONS, STATE_KEY, blueprint
from lcore_core import ConfigError, ConfigSection, ReadinessCheck, UpstreamImporter, hookimpl

if TYPE_CHECKING:
    from quart import Blueprint

    from lcore_core import Config, Runtime


@hookimpl
def lcore_config_sections() -> list[ConfigSection]:
    return [ConfigSection("a2a_state", A2AStateSchema,
                          "where A2A contexts and tasks are kept: sqlite, postgres or memory "
                          "(lcore-a2a)")]


@hookimpl
def lcore_actions() -> list[str]:
    return list(ACTIONS)


@hookimpl
def lcore_blueprints(config: Config) -> list[Blueprint]:
    try:  # a bad agent card fails at start-up, not at every discovery request
        build_card(config, "http://localhost")
    except ValidationError as exc:
        raise ConfigError(f"invalid agent card: {describe(exc)}", file=config.source,
                          key="customization.agent_card_config") from None
    return [blueprint()]


@hookimpl
def lcore_upstream_importers(config: Config) -> list[UpstreamImporter]:
    state = config.get("a2a_state") or {}
    if not (state.get("sqlite") or state.get("postgres")):
        return []  # kept in memory: nothing to import into
    return [UpstreamImporter("a2a", "a2a_state", import_a2a)]


@hookimpl
async def lcore_startup(runtime: Runtime) -> None:
    store = open_store(runtime.config.get("a2a_state"), runtime.storage)
    await store.setup()
    runtime.state[STATE_KEY] = A2AService(runtime, store)


@hookimpl
async def lcore_shutdown(runtime: Runtime) -> None:
    service: A2AService | None = runtime.state.pop(STATE_KEY, None)
    if service is not None:
        await service.store.close()


@hookimpl
def lcore_readiness(runtime: Runtime) -> list[ReadinessCheck]:
    service: A2AService | None = runtime.state.get(STATE_KEY)
    if service is None or isinstance(service.store, MemoryStore):
        return []
    return [ReadinessCheck("a2a-state", service.store.ready)]
