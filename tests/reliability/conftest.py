"""The reliability suite: real Llama Stack, real PostgreSQL, real `lcore serve` processes.

Every test here carries the `reliability` marker (run by default; `-m "not reliability"` skips
the suite). PostgreSQL (127.0.0.1:5432, database `test`) missing is a failure, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core.conftest import make_app, serving, stack_url, write_config

from .support import pg_schema

__all__ = ["make_app", "serving", "stack_url", "write_config"]

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def schema() -> Iterator[str]:
    """A PostgreSQL schema of this test alone."""
    with pg_schema() as name:
        yield name


