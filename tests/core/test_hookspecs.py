"""The hook specs are the plugin author's manual: each must document every argument."""

from __future__ import annotations

import inspect
import re

import pytest

from lcore_core import hookspecs

SPECS = sorted(
    (name, fn) for name, fn in vars(hookspecs).items()
    if name.startswith("lcore_") and callable(fn)
    and hasattr(fn, f"{hookspecs.PROJECT}_spec")
)


def test_specs_found() -> None:
    names = {name for name, _ in SPECS}
    assert {"lcore_auth_providers", "lcore_authorize", "lcore_startup"} <= names


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[name for name, _ in SPECS])
def test_spec_documents_each_argument(name: str, spec: object) -> None:
    doc = inspect.getdoc(spec)
    assert doc, f"{name} has no docstring"
    for arg in inspect.signature(spec).parameters:  # type: ignore[arg-type]
        assert re.search(rf"`{arg}`", doc), f"{name}: argument {arg!r} is not documented"


def test_every_spec_is_on_the_facade() -> None:
    """The typed facade (`Plugins`) calls each hook; a spec nobody calls is dead weight."""
    source = inspect.getsource(__import__("lcore_core.plugins", fromlist=["_"]))
    for name, _ in SPECS:
        assert f"hook.{name}" in source, f"{name} is not called by lcore_core.plugins.Plugins"
