"""Every route is guarded by `@authorize(action)` unless it is on an explicit public list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quart import Blueprint, jsonify

from lcore_core import hookimpl
from lcore_core.app import LCoreApp, create_app
from lcore_core.auth import Action

# (path, method) pairs anyone may call; "*" = every method of that path.
PUBLIC = {
    ("/health", "*"), ("/liveness", "*"), ("/v1/liveness", "*"),
    ("/readiness", "*"), ("/v1/readiness", "*"),  # skippable with skip_for_health_probes
    ("/openapi.json", "*"), ("/docs", "*"),
    ("/.well-known/agent.json", "*"), ("/.well-known/agent-card.json", "*"),
    ("/v1/feedback/status", "GET"), ("/feedback/status", "GET"),
    ("/a2a/health", "GET"),  # upstream's, unauthenticated
}
# Authentication without an action, as upstream: any authenticated caller may ask who they are.
AUTHENTICATED_ONLY = {("/authorized", "POST"), ("/v1/authorized", "POST")}
IGNORED_METHODS = {"HEAD", "OPTIONS"}


def unguarded(app: LCoreApp) -> list[str]:
    """`METHOD path (endpoint)` of every route whose view has no `lcore_action`."""
    offenders = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if getattr(view, "lcore_action", None) is not None:
            continue
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            key = (rule.rule, method)
            if (rule.rule, "*") in PUBLIC or key in PUBLIC or key in AUTHENTICATED_ONLY:
                continue
            offenders.append(f"{method} {rule.rule} ({rule.endpoint})")
    return offenders


def actions_used(app: LCoreApp) -> set[str]:
    return {str(view.lcore_action) for view in app.view_functions.values()
            if getattr(view, "lcore_action", None) is not None}


def test_every_route_of_every_installed_plugin_is_guarded(write_config: Any) -> None:
    # All installed plugins (entry points), with the configuration that mounts their routes.
    app = create_app(write_config({"authentication": {"module": "noop"}}))
    assert len(list(app.url_map.iter_rules())) > 20
    offenders = unguarded(app)
    assert not offenders, "routes without @authorize and not public:\n" + "\n".join(offenders)
    unknown = actions_used(app) - app.runtime.config.valid_actions
    assert not unknown, f"routes guarded by actions no configuration can grant: {unknown}"


async def test_plugin_routes_are_walked_too(example_plugin_installed: str,
                                            write_config: Any) -> None:
    app = create_app(write_config({"authentication": {"module": "header"}}))
    rules = {r.rule for r in app.url_map.iter_rules()}
    assert "/v1/header-auth/whoami" in rules
    assert not unguarded(app)
    assert "header_whoami" in actions_used(app)


class LeakyPlugin:
    """A plugin that forgets `@authorize`: the audit must name its route."""

    bp = Blueprint("leaky", __name__)

    @staticmethod
    @bp.route("/v1/leaky/secrets", methods=["GET", "POST"])
    async def secrets() -> Any:
        return jsonify({"secret": True})

    @hookimpl
    def lcore_blueprints(self) -> list[Blueprint]:
        return [self.bp]


def test_audit_names_an_unguarded_plugin_route(make_app: Any) -> None:
    app = make_app({}, LeakyPlugin())
    assert unguarded(app) == ["GET /v1/leaky/secrets (leaky.secrets)",
                              "POST /v1/leaky/secrets (leaky.secrets)"]


async def test_authenticated_only_routes_still_need_credentials(make_app: Any) -> None:
    client = make_app({"authentication": {"module": "noop-with-token"}}).test_client()
    for path in ("/authorized", "/v1/authorized"):
        assert (await client.post(path)).status_code == 401
        ok = await client.post(path, headers={"Authorization": "Bearer t"})
        assert ok.status_code == 200


async def test_guarded_routes_refuse_a_caller_without_the_action(make_app: Any) -> None:
    # With rules that grant nothing, every guarded GET answers 403 (never 200), public ones 2xx.
    app = make_app({"authorization": {"always_apply_access_rules": True,
                                      "access_rules": [{"role": "nobody", "actions": []}]}})
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if "GET" not in (rule.methods or ()) or rule.arguments or rule.endpoint == "static":
            continue
        response = await client.get(rule.rule)
        if getattr(view, "lcore_action", None) is None:
            continue
        # Health probes too: they are only open with authentication.skip_for_health_probes.
        assert response.status_code == 403, (rule.rule, response.status_code)
        checked += 1
    assert checked >= 10


def test_actions_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "authorization.md").read_text()
    missing = [a.value for a in Action if f"`{a.value}`" not in doc]
    assert not missing, f"actions missing from docs/authorization.md: {missing}"
