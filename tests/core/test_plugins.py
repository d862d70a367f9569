"""The plugin manager with inline plugins on a fresh, hermetic manager."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from lcore_core import AuthProvider, AuthTuple, ConfigError, QuotaExceeded, QuotaTicket, hookimpl
from lcore_core.builtins import NoopAuth
from lcore_core.events import QueryCompleted
from lcore_core.plugins import load_plugins

ALICE = AuthTuple("alice-id", "alice", frozenset({"dev"}))


def _provider(name: str) -> AuthProvider:
    return AuthProvider(name, lambda settings, config: NoopAuth())


class ProviderA:
    @hookimpl
    def lcore_auth_providers(self) -> list[AuthProvider]:
        return [_provider("shared")]


class ProviderB:
    @hookimpl
    def lcore_auth_providers(self) -> list[AuthProvider]:
        return [_provider("shared")]


def test_duplicate_provider_names_both_plugins() -> None:
    plugins = load_plugins(entrypoints=False)
    plugins.register(ProviderA(), "plugin-a")
    plugins.register(ProviderB(), "plugin-b")
    with pytest.raises(ConfigError) as info:
        plugins.auth_providers()
    message = str(info.value)
    assert "'shared'" in message
    assert "plugin-a" in message and "plugin-b" in message


def test_duplicate_of_a_builtin_name_fails_too() -> None:
    class Noop:
        @hookimpl
        def lcore_auth_providers(self) -> list[AuthProvider]:
            return [_provider("noop")]

    plugins = load_plugins(entrypoints=False, extra=[Noop()])
    with pytest.raises(ConfigError, match=r"lcore_core\.builtins"):
        plugins.auth_providers()


def test_misspelt_hook_name_fails_at_check() -> None:
    class Misspelt:
        @hookimpl
        def lcore_auth_provider(self) -> list[AuthProvider]:  # missing the trailing "s"
            return []

    with pytest.raises(ConfigError, match="lcore_auth_provider"):
        load_plugins(entrypoints=False, extra=[Misspelt()])


def test_blocked_in_config_is_not_registered(write_config: Any) -> None:
    from lcore_core.app import create_app

    class Blockable:
        @hookimpl
        def lcore_auth_providers(self) -> list[AuthProvider]:
            return [_provider("blockable-auth")]

    def plugins_for(blocked: list[str]) -> Any:
        plugins = load_plugins(entrypoints=False, blocked=blocked)
        plugins.register(Blockable(), "blockable")
        return plugins

    assert "blockable-auth" in plugins_for([]).auth_providers()
    assert "blockable-auth" not in plugins_for(["blockable"]).auth_providers()

    # Through the configuration: `plugins.blocked` is honoured before anything is loaded...
    from lcore_core.app import _blocked_plugins

    path = write_config({"plugins": {"blocked": ["blockable", "other"]}})
    assert _blocked_plugins(path) == ["blockable", "other"]
    # ...and an app whose config selects a provider of the blocked plugin refuses to start.
    selected = write_config({"plugins": {"blocked": ["blockable"]},
                             "authentication": {"module": "blockable-auth"}})
    with pytest.raises(ConfigError, match="blockable-auth"):
        create_app(selected, plugins=plugins_for(_blocked_plugins(selected)))


def test_blocking_a_builtin_removes_its_providers() -> None:
    plugins = load_plugins(entrypoints=False, blocked=["lcore_core.builtins"])
    assert plugins.auth_providers() == {}


class AsyncQuota:
    def __init__(self, available: int, refuse: bool = False) -> None:
        self.available = available
        self.refuse = refuse
        self.checked: list[str] = []

    @hookimpl
    async def lcore_quota_check(self, auth: AuthTuple) -> None:
        self.checked.append(auth.user_id)
        if self.refuse:
            raise QuotaExceeded("The quota has been exceeded", f"{auth.user_id} has no tokens")

    @hookimpl
    async def lcore_quota_status(self, auth: AuthTuple) -> dict[str, int]:
        return {f"limiter-{self.available}": self.available}


class SyncQuota:
    @hookimpl
    def lcore_quota_status(self) -> dict[str, int]:
        return {"sync-limiter": 7}


class SyncCheck:
    def __init__(self) -> None:
        self.checked = 0

    @hookimpl
    def lcore_quota_check(self) -> None:
        self.checked += 1


async def test_async_quota_hooks_are_awaited() -> None:
    # pluggy calls the last registered first: refusing, then ok, then the synchronous one.
    sync, ok, refusing = SyncCheck(), AsyncQuota(10), AsyncQuota(0, refuse=True)
    plugins = load_plugins(entrypoints=False, extra=[sync, ok, refusing, SyncQuota()])
    with pytest.raises(QuotaExceeded, match="alice-id has no tokens"):
        await plugins.quota_check(ALICE, QuotaTicket("q", "/v2/query"), runtime=None)  # type: ignore[arg-type]
    assert refusing.checked == ["alice-id"]
    # A refusal stops the chain: nothing after it runs (or is left un-awaited).
    assert ok.checked == [] and sync.checked == 0
    status = await plugins.quota_status(ALICE, runtime=None)  # type: ignore[arg-type]
    assert status == {"limiter-10": 10, "limiter-0": 0, "sync-limiter": 7}


async def test_quota_check_passes_when_no_plugin_refuses() -> None:
    first, second = AsyncQuota(5), AsyncQuota(6)
    plugins = load_plugins(entrypoints=False, extra=[first, second])
    await plugins.quota_check(ALICE, QuotaTicket("q", "/v2/query"), runtime=None)  # type: ignore[arg-type]
    assert first.checked == second.checked == ["alice-id"]


async def test_authorize_false_denies_before_rbac(make_app: Any) -> None:
    class Deny:
        def __init__(self) -> None:
            self.asked: list[str] = []

        @hookimpl
        def lcore_authorize(self, auth: AuthTuple, action: str) -> bool | None:
            self.asked.append(action)
            return False if action == "info" else None

    deny = Deny()
    # RBAC alone would allow everything (no authorization section).
    client = make_app({}, deny).test_client()
    assert (await client.get("/v1/info")).status_code == 403
    assert deny.asked == ["info"]
    plugins = client.app.runtime.plugins
    assert plugins.authorize(ALICE, "get_models", None) is True  # None: RBAC decides
    assert plugins.authorize(ALICE, "info", None) is False


async def test_authorize_true_overrides_rbac(make_app: Any) -> None:
    class Allow:
        @hookimpl
        def lcore_authorize(self, auth: AuthTuple, action: str) -> bool | None:
            return True if action == "info" else None

    rules = {"authorization": {"always_apply_access_rules": True,
                               "access_rules": [{"role": "*", "actions": ["get_models"]}]}}
    assert (await make_app(rules).test_client().get("/v1/liveness")).status_code == 403
    assert (await make_app(rules, Allow()).test_client().get("/v1/liveness")).status_code == 200


async def test_query_completed_exceptions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        @hookimpl
        async def lcore_query_completed(self, event: QueryCompleted) -> None:
            raise RuntimeError("observer exploded")

    class Recorder:
        def __init__(self) -> None:
            self.events: list[Any] = []

        @hookimpl
        def lcore_query_completed(self, event: QueryCompleted) -> None:
            self.events.append(event)

    recorder = Recorder()
    plugins = load_plugins(entrypoints=False)
    plugins.register(Broken(), "broken-observer")
    plugins.register(recorder, "recorder")
    event = object()
    with caplog.at_level(logging.ERROR, logger="lcore.plugins"):
        await plugins.query_completed(event, runtime=None)  # type: ignore[arg-type]
    assert recorder.events == [event]  # the other observers still ran
    assert "broken-observer" in caplog.text
    assert "observer exploded" in caplog.text


async def test_startup_failure_stops_startup(make_app: Any) -> None:
    class FailingStart:
        @hookimpl
        def lcore_startup(self) -> None:
            raise RuntimeError("cannot open my backend")

    from quart.testing.app import LifespanError

    app = make_app({}, FailingStart())
    with pytest.raises(LifespanError, match="cannot open my backend"):
        async with app.test_app():
            pass
