"""Fixtures for the core tests: configs written to tmp_path, apps with chosen inline plugins."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from lcore_core.app import LCoreApp, create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing import ScriptedLLM

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PLUGIN = REPO / "examples" / "plugins" / "lcore_example_header_auth"
LCORE = Path(sys.executable).parent / "lcore"

ConfigWriter = Callable[..., Path]
AppFactory = Callable[..., LCoreApp]


@pytest.fixture(scope="session")
def stack_url() -> Iterator[str]:
    """A local stand-in for Llama Stack's `GET /v1/models`, so readiness can pass."""
    with ScriptedLLM() as llm:
        yield llm.base_url.removesuffix("/v1")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` merged into a copy of `base`, mappings recursively."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
def write_config(tmp_path: Path, stack_url: str) -> ConfigWriter:
    """`write_config({...})` writes a lightspeed-stack.yaml (base + overrides) and returns it."""

    def write(extra: dict[str, Any] | None = None, *, name: str = "lightspeed-stack.yaml") -> Path:
        base = {
            "name": "LCore test",
            "service": {"host": "127.0.0.1", "port": 8080, "log_format": "json"},
            "llama_stack": {"url": stack_url, "timeout": 5},
            "database": {"sqlite": {"db_path": str(tmp_path / "user.db")}},
        }
        path = tmp_path / name
        with path.open("w", encoding="utf-8") as fh:
            YAML().dump(merge(base, extra or {}), fh)
        return path

    return write


@pytest.fixture
def make_app(write_config: ConfigWriter) -> AppFactory:
    """`make_app({...}, plugin, ...)`: an app on a hermetic manager (built-ins + given plugins)."""

    def make(extra: dict[str, Any] | None = None, *plugins: object) -> LCoreApp:
        return create_app(write_config(extra),
                          plugins=load_plugins(entrypoints=False, extra=plugins))

    return make


@contextlib.asynccontextmanager
async def _serving(app: LCoreApp) -> AsyncIterator[Any]:
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.fixture
def serving() -> Callable[[LCoreApp], contextlib.AbstractAsyncContextManager[Any]]:
    """`async with serving(app) as client`: start-up and shutdown hooks run around the client."""
    return _serving


def pip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, check=check, timeout=300)


def install_flags() -> list[str]:
    """Offline and fast: build with the venv's own setuptools (installed once if missing)."""
    if importlib.util.find_spec("setuptools") is None:
        pip("install", "-q", "setuptools>=69")
        importlib.invalidate_caches()
    return ["-q", "--no-deps", "--no-build-isolation"]


def activate_pth(distribution: str) -> None:
    """Run an installed distribution's `.pth` file in this interpreter, as `site` would have done
    at start-up (an editable install's import hook lives there)."""
    from importlib import metadata

    importlib.invalidate_caches()
    dist = metadata.distribution(distribution)
    for file in dist.files or ():
        if file.suffix != ".pth":
            continue
        pth = Path(str(dist.locate_file(file)))
        for line in pth.read_text(encoding="utf-8").splitlines():
            if line.startswith(("import ", "import\t")):
                exec(line)  # exactly what site.addpackage does with such a line
            elif line.strip() and not line.startswith("#") and line.strip() not in sys.path:
                sys.path.append(line.strip())
    importlib.invalidate_caches()


def is_installed(distribution: str) -> bool:
    return pip("show", "-q", distribution, check=False).returncode == 0


@pytest.fixture(scope="session")
def pip_install() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`pip_install(*args)`: `pip install` with no dependencies and no build isolation."""
    return lambda *args: pip("install", *install_flags(), *args)


@pytest.fixture(scope="session")
def example_plugin_installed() -> Iterator[str]:
    """Install the example plugin (editable) into the running venv for the session."""
    dist = "lcore-example-header-auth"
    already = is_installed(dist)
    if not already:
        pip("install", *install_flags(), "-e", str(EXAMPLE_PLUGIN))
        activate_pth(dist)
    try:
        yield dist
    finally:
        if not already:
            pip("uninstall", "-y", "-q", dist, check=False)
            importlib.invalidate_caches()
