"""Entry-point discovery with real installed distributions: the example plugin and a broken one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core import ConfigError
from lcore_core.app import create_app
from lcore_core.plugins import load_plugins

LCORE = Path(sys.executable).parent / "lcore"

EXAMPLE_DIST = "lcore-example-header-auth"
BROKEN_DIST = "lcore-test-broken-plugin"
BROKEN_PLUGIN = "broken_example"

HEADER_CONFIG = {
    "authentication": {"module": "header",
                       "header_config": {"user_header": "X-Test-User",
                                         "roles_header": "X-Test-Roles"}},
    "authorization": {"access_rules": [{"role": "*", "actions": ["info"]},
                                       {"role": "devs", "actions": ["header_whoami"]}]},
}


def lcore(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in os.environ.items() if k != "LCORE_CONFIG"}
    run_env.update(env or {})
    return subprocess.run([str(LCORE), *args], capture_output=True, text=True, timeout=120,
                          env=run_env)


# --- the example plugin -----------------------------------------------------------------------


def test_discovered_with_its_distribution(example_plugin_installed: str) -> None:
    plugins = load_plugins()
    assert plugins.failures == []
    assert plugins.distribution_of("header_auth") == EXAMPLE_DIST
    assert "header" in plugins.auth_providers()
    assert plugins.owner("auth provider", "header") == "header_auth"
    assert "header_whoami" in plugins.actions()
    # Hermetic managers do not see it.
    assert "header" not in load_plugins(entrypoints=False).auth_providers()


def test_blocked_by_name(example_plugin_installed: str) -> None:
    assert "header" not in load_plugins(blocked=["header_auth"]).auth_providers()


async def test_header_module_end_to_end(example_plugin_installed: str, write_config: Any,
                                        serving: Any) -> None:
    app = create_app(write_config(HEADER_CONFIG))
    async with serving(app) as client:
        missing = await client.get("/v1/info")
        assert missing.status_code == 401
        assert "X-Test-User" in (await missing.get_json())["detail"]["cause"]
        assert (await client.get("/v1/info", headers={"X-Test-User": "alice"})).status_code \
            == 200

        # The plugin's own action: granted by a role that only the roles header gives.
        no_role = await client.get("/v1/header-auth/whoami", headers={"X-Test-User": "alice"})
        assert no_role.status_code == 403
        assert (await no_role.get_json())["detail"]["cause"] == \
            "User alice is not authorized to access this endpoint."
        granted = await client.get("/v1/header-auth/whoami",
                                   headers={"X-Test-User": "alice",
                                            "X-Test-Roles": " devs, ops ,"})
        assert granted.status_code == 200
        assert await granted.get_json() == {"user_id": "alice", "username": "alice",
                                            "roles": ["devs", "ops"]}

        ready = await client.get("/readiness", headers={"X-Test-User": "probe"})
        body = await ready.get_json()
        assert ready.status_code == 200, body
        assert {"provider_id": "header-auth", "status": "ok", "message": None} \
            in body["providers"]

        info = await (await client.get("/v1/info", headers={"X-Test-User": "a"})).get_json()
        mine = [p for p in info["plugins"] if p["name"] == "header_auth"]
        assert mine and mine[0]["distribution"] == EXAMPLE_DIST


async def test_not_selected_adds_no_route(example_plugin_installed: str,
                                          write_config: Any) -> None:
    client = create_app(write_config()).test_client()
    assert (await client.get("/v1/header-auth/whoami")).status_code == 404


def test_header_config_is_validated(example_plugin_installed: str, write_config: Any) -> None:
    bad = {"authentication": {"module": "header",
                              "header_config": {"user_header": "not a header", "extra": 1}}}
    with pytest.raises(ConfigError) as info:
        create_app(write_config(bad))
    message = str(info.value)
    assert "authentication.header_config.user_header" in message
    assert "authentication.header_config.extra" in message
    assert "lightspeed-stack.yaml:" in message


def test_plugins_list_shows_it(example_plugin_installed: str, write_config: Any) -> None:
    result = lcore("plugins", "list", "-c", str(write_config(HEADER_CONFIG)))
    assert result.returncode == 0, result.stderr
    assert f"header_auth  ({EXAMPLE_DIST} 0.1.0)" in result.stdout
    assert "auth provider: header  [selected]" in result.stdout


# --- a broken plugin --------------------------------------------------------------------------


@pytest.fixture
def broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  pip_install: Any) -> Iterator[Path]:
    """A real distribution whose module fails to import, installed for this test only.

    It goes to a private target directory on `sys.path` (and `PYTHONPATH` for subprocesses), not
    into the shared venv, where it would break every other process's start-up meanwhile.
    """
    src = tmp_path / "broken-src"
    (src / "lcore_test_broken_plugin").mkdir(parents=True)
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{BROKEN_DIST}"
        version = "0.0.1"

        [project.entry-points.lcore]
        {BROKEN_PLUGIN} = "lcore_test_broken_plugin"
        """))
    (src / "lcore_test_broken_plugin" / "__init__.py").write_text(
        'raise ImportError("lcore_test_broken_plugin needs libdoesnotexist")\n')
    target = tmp_path / "site"
    try:
        pip_install("--target", str(target), str(src))
        monkeypatch.syspath_prepend(str(target))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (str(target), os.environ.get("PYTHONPATH")) if p))
        yield target
    finally:
        monkeypatch.undo()
        shutil.rmtree(target, ignore_errors=True)
        sys.modules.pop("lcore_test_broken_plugin", None)


def test_broken_plugin_is_recorded_and_others_load(broken_plugin: Path,
                                                   example_plugin_installed: str) -> None:
    plugins = load_plugins()
    assert [(f.plugin, f.distribution) for f in plugins.failures] == [(BROKEN_PLUGIN,
                                                                       BROKEN_DIST)]
    failure = plugins.failures[0]
    assert isinstance(failure.error, ImportError)
    assert BROKEN_PLUGIN in str(failure) and BROKEN_DIST in str(failure)
    assert "libdoesnotexist" in str(failure)
    assert plugins.pm.get_plugin("lcore_core.builtins") is not None
    assert plugins.pm.get_plugin("header_auth") is not None
    described = {p.name: p for p in plugins.describe()}
    assert described[BROKEN_PLUGIN].error and described[BROKEN_PLUGIN].distribution == BROKEN_DIST


def test_broken_plugin_stops_create_app(broken_plugin: Path, write_config: Any) -> None:
    with pytest.raises(ConfigError) as info:
        create_app(write_config())
    assert BROKEN_PLUGIN in str(info.value) and BROKEN_DIST in str(info.value)
    # Blocking it by name in the configuration lets the service start.
    app = create_app(write_config({"plugins": {"blocked": [BROKEN_PLUGIN]}}))
    assert app.runtime.plugins.failures == []


def test_broken_plugin_in_plugins_list(broken_plugin: Path, write_config: Any) -> None:
    result = lcore("plugins", "list", "-c", str(write_config()))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    failed = [line for line in lines if line.startswith(BROKEN_PLUGIN)]
    assert failed and BROKEN_DIST in failed[0] and "FAILED" in failed[0]
    assert "libdoesnotexist" in failed[0]
    assert any(line.startswith("lcore_core.builtins  (lcore-core") for line in lines)


def test_broken_plugin_is_gone_afterwards() -> None:
    assert all(f.plugin != BROKEN_PLUGIN for f in load_plugins().failures)
