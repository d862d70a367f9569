"""Plugins reach the core only through its public face: `lcore_core` (the root),
`lcore_core.api` and `lcore_core.testing`. Every in-repo plugin is scanned, so a private import
(`from lcore_core.pipeline import ...`) fails here, not in a third party's upgrade."""

from __future__ import annotations

import ast
from pathlib import Path

import lcore_core
import lcore_core.api

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
PUBLIC = {"lcore_core", "lcore_core.api"}


def _core_imports(path: Path) -> list[tuple[int, str]]:
    """(line, what) for every import of the core in `path` that is not public."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module = node.module
            if module.startswith("lcore_core.testing"):
                continue
            if module.startswith("lcore_core") and module not in PUBLIC:
                found.append((node.lineno, f"from {module} import ..."))
            if module == "lcore_core":
                for alias in node.names:  # `from lcore_core import pipeline`: a submodule
                    if alias.name not in lcore_core.__all__ and alias.name not in {"api",
                                                                                  "testing"}:
                        found.append((node.lineno, f"from lcore_core import {alias.name}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lcore_core.") and alias.name not in PUBLIC \
                        and not alias.name.startswith("lcore_core.testing"):
                    found.append((node.lineno, f"import {alias.name}"))
    return found


def test_plugins_import_only_the_public_face() -> None:
    sources = sorted(PLUGINS.glob("*/lcore_*/**/*.py"))
    assert len(sources) > 20  # the scan sees the plugins
    private = [f"{path.relative_to(PLUGINS)}:{line}: {what}"
               for path in sources for line, what in _core_imports(path)]
    assert private == []


def test_the_scan_finds_a_private_import(tmp_path: Path) -> None:
    source = tmp_path / "p.py"
    source.write_text("from lcore_core import hookimpl, pipeline\n"
                      "from lcore_core.mcp import MCP_HEADERS\nimport lcore_core.userdb\n"
                      "from lcore_core.api import run\nfrom lcore_core.testing import errors\n")
    assert [what for _, what in _core_imports(source)] == [
        "from lcore_core import pipeline", "from lcore_core.mcp import ...",
        "import lcore_core.userdb"]


def test_the_api_module_exports_what_it_lists() -> None:
    assert all(hasattr(lcore_core.api, name) for name in lcore_core.api.__all__)
