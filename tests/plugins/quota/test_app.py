"""The plugin in a running app (start-up, shutdown, routes, metrics, readiness) and its CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lcore_quota.plugin
import pytest
from lcore_quota.periods import Period
from lcore_quota.quota import iso, utcnow

from lcore_core.app import create_app
from lcore_core.cli import main as lcore
from lcore_core.plugins import load_plugins

from .conftest import PG, limiter

LIMITERS = [limiter("user-daily", initial=5000),
            limiter("cluster-monthly", "cluster_limiter", initial=900_000, period="1 month")]


def quota_yaml(storage: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"quota_handlers": {**storage, "limiters": LIMITERS, "scheduler": {"period": 3600},
                               "enable_token_history": True, **extra}}


@pytest.fixture
def sqlite_storage(tmp_path: Path) -> dict[str, Any]:
    return {"sqlite": {"db_path": str(tmp_path / "quota.db")}}


def make(write_config: Any, yaml: dict[str, Any]) -> Any:
    return create_app(write_config(yaml), plugins=load_plugins(
        entrypoints=False, extra=[lcore_quota.plugin]))


async def test_lifecycle_starts_and_stops_the_scheduler(write_config: Any, serving: Any,
                                                        sqlite_storage: Any) -> None:
    app = make(write_config, quota_yaml(sqlite_storage))
    async with serving(app):
        scheduler = app.runtime.state["lcore-quota.scheduler"]
        assert scheduler.task is not None and not scheduler.task.done()
        quota = app.runtime.state["lcore-quota"]
        assert quota.store.ready
    assert scheduler.task is None
    assert "lcore-quota" not in app.runtime.state


async def test_absent_section_leaves_the_service_alone(write_config: Any, serving: Any) -> None:
    app = make(write_config, {})
    async with serving(app) as client:
        assert "lcore-quota" not in app.runtime.state
        response = await client.get("/v2/conversations?user_id=alice")
        assert "X-Quota-Remaining" not in response.headers


async def test_exhausted_user_gets_429_json_and_headers(write_config: Any, serving: Any,
                                                        sqlite_storage: Any) -> None:
    path = write_config(quota_yaml(sqlite_storage))
    app = create_app(path, plugins=load_plugins(entrypoints=False, extra=[lcore_quota.plugin]))
    async with serving(app) as client:
        # The administrator revokes alice's budget (the CLI works on the same database).
        assert lcore(["quota", "revoke", "--user", "alice", "-c", str(path)]) == 0
        response = await client.post("/v2/query?user_id=alice", json={"query": "hello"})
        assert response.status_code == 429
        detail = (await response.get_json())["detail"]
        next_day = iso(Period.parse("1 day").next_start(utcnow()))
        assert detail["limiter"] == "user-daily"
        assert detail["resets_at"] == next_day
        assert detail["available"] == 0
        assert "User alice has" in detail["cause"] and next_day in detail["cause"]
        assert int(response.headers["Retry-After"]) > 0
        assert response.headers["X-Quota-Remaining"] == "user-daily=0, cluster-monthly=900000"
        assert response.headers["X-Quota-Limit"] == "user-daily=5000, cluster-monthly=900000"
        assert f"user-daily={next_day}" in response.headers["X-Quota-Reset"]
        # Nothing was held for the refused request, on any limiter.
        quota = app.runtime.state["lcore-quota"]
        assert await quota.status("alice") == {"user-daily": 0, "cluster-monthly": 900000}


async def test_headers_on_other_authenticated_responses(write_config: Any, serving: Any,
                                                        sqlite_storage: Any) -> None:
    app = make(write_config, quota_yaml(sqlite_storage))
    async with serving(app) as client:
        response = await client.get("/v2/conversations?user_id=bob")
        assert response.status_code == 200
        assert response.headers["X-Quota-Remaining"] == "user-daily=5000, cluster-monthly=900000"
        probe = await client.get("/liveness")  # authenticated too: the default user
        assert "user-daily=5000" in probe.headers["X-Quota-Remaining"]
        spec = await client.get("/openapi.json")
        assert "X-Quota-Remaining" not in spec.headers  # no caller, no budget


async def test_metrics_and_readiness(write_config: Any, serving: Any,
                                     sqlite_storage: Any) -> None:
    app = make(write_config, quota_yaml(sqlite_storage))
    async with serving(app) as client:
        await app.runtime.state["lcore-quota.scheduler"].tick()
        text = await (await client.get("/metrics")).get_data(as_text=True)
        assert 'ls_quota_limit_tokens{limiter="user-daily",subject_type="user"} 5000.0' in text
        assert ('ls_quota_available_tokens{limiter="cluster-monthly",subject_type="cluster"} '
                '900000.0') in text
        assert 'ls_quota_consumed_tokens_total{limiter="user-daily",subject_type="user"} 0.0' \
            in text
        readiness = await client.get("/readiness")
        assert readiness.status_code == 200, await readiness.get_json()


async def test_quota_database_down_fails_closed(write_config: Any, serving: Any,
                                                pg_namespace: str, proxy: Any) -> None:
    storage = {"postgres": {**PG, "port": proxy.port, "namespace": pg_namespace}}
    app = make(write_config, quota_yaml(storage))
    async with serving(app) as client:
        await proxy.cut()
        response = await client.post("/v2/query?user_id=alice", json={"query": "hello"})
        assert response.status_code == 503
        detail = (await response.get_json())["detail"]
        assert detail["response"] == "Quota database unavailable"
        assert "Traceback" not in json.dumps(detail)
        readiness = await client.get("/readiness")
        assert readiness.status_code == 503
        assert "quota-database" in json.dumps(await readiness.get_json())
        await proxy.start()
        assert (await client.get("/readiness")).status_code == 200


# --- the CLI (through the installed entry point, as an operator runs it) ----------------------


def test_cli_show_set_increase_revoke(write_config: Any, sqlite_storage: Any,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = str(write_config(quota_yaml(sqlite_storage)))

    def run(*args: str) -> dict[str, Any]:
        assert lcore(["quota", *args, "-c", path, *(["--json"] if args[0] == "show" else [])]
                     ) == 0
        out = capsys.readouterr().out
        return json.loads(out) if args[0] == "show" else {"text": out}

    shown = run("show", "--user", "carol")
    assert [(lim["name"], lim["available"]) for lim in shown["limiters"]] == [("user-daily",
                                                                               5000)]
    assert shown["token_history"] is True and shown["token_usage"] == []
    assert "user-daily" in run("set", "--user", "carol", "1234")["text"]
    run("increase", "--user", "carol", "66", "--limiter", "user-daily")
    assert run("show", "--user", "carol")["limiters"][0]["available"] == 1300
    run("revoke", "--user", "carol")
    [state] = run("show", "--user", "carol")["limiters"]
    assert state["available"] == 0 and state["revoked_at"] is not None
    run("increase", "--cluster", "100")
    [cluster] = run("show", "--cluster")["limiters"]
    assert (cluster["name"], cluster["available"]) == ("cluster-monthly", 900_100)
    assert "1 of" not in run("show", "--user", "carol")["limiters"][0]["period"]


def test_cli_errors(write_config: Any, sqlite_storage: Any,
                    capsys: pytest.CaptureFixture[str]) -> None:
    path = str(write_config(quota_yaml(sqlite_storage)))
    assert lcore(["quota", "set", "--user", "x", "5", "--limiter", "nope", "-c", path]) == 2
    assert "no user limiter named 'nope'" in capsys.readouterr().err
    bare = str(write_config({}, name="bare.yaml"))
    assert lcore(["quota", "show", "--user", "x", "-c", bare]) == 2
    assert "no quota limiters are configured" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lcore(["quota", "show", "-c", path])  # --user or --cluster is required


@pytest.mark.parametrize("storage", ["sqlite", "postgres"], indirect=True)
def test_cli_token_counts_are_range_checked(write_config: Any, storage: dict[str, Any],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Negative counts and counts past a 64-bit column are refused before any write; an
    increase that would pass the largest count stops at it (no float, no overflow error)."""
    path = str(write_config(quota_yaml(storage)))
    for args in (["set", "--user", "dave", "-5"], ["increase", "--user", "dave", "-1"],
                 ["set", "--user", "dave", str(2**63)], ["increase", "--cluster", "1e9"]):
        with pytest.raises(SystemExit) as exited:
            lcore(["quota", *args, "-c", path])
        assert exited.value.code == 2
        assert "tokens:" in capsys.readouterr().err
    assert lcore(["quota", "set", "--user", "dave", str(2**63 - 10), "-c", path]) == 0
    assert lcore(["quota", "increase", "--user", "dave", str(2**63 - 1), "-c", path]) == 0
    capsys.readouterr()
    assert lcore(["quota", "show", "--user", "dave", "--json", "-c", path]) == 0
    [state] = json.loads(capsys.readouterr().out)["limiters"]
    assert state["available"] == 2**63 - 1 and isinstance(state["available"], int)
