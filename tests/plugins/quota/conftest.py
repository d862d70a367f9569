"""Fixtures for lcore-quota: storage on a real SQLite file or a fresh PostgreSQL schema, a clock
the tests drive, and a TCP proxy that cuts PostgreSQL without touching the shared server.

PostgreSQL (127.0.0.1:5432, database `test`) missing is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from lcore_quota.config import QuotaHandlersSchema
from lcore_quota.quota import Quota

from lcore_core import Settings
from lcore_core.testing.tcp_proxy import TcpProxy
from tests.core.conftest import make_app, serving, stack_url, write_config

__all__ = ["make_app", "serving", "stack_url", "write_config"]

PG: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "db": "test", "user": "postgres",
      "ssl_mode": "disable", "gss_encmode": "disable"}
# A Wednesday noon, so that day, week and month boundaries are all some way off.
START = dt.datetime(2025, 1, 15, 12, 0, 0, tzinfo=dt.UTC)


def pg_connect() -> Any:
    return psycopg.connect(host=PG["host"], port=PG["port"], dbname=PG["db"], user=PG["user"],
                           connect_timeout=5)


@contextlib.contextmanager
def own_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards; fails when PostgreSQL is unreachable."""
    name = f"lcore_quota_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = pg_connect()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL on {PG['host']}:{PG['port']} is required: {exc}")
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.close()


@pytest.fixture
def pg_namespace() -> Iterator[str]:
    """A schema of this test alone."""
    with own_schema() as name:
        yield name


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The storage part of `quota_handlers`: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        return {"sqlite": {"db_path": str(tmp_path / "quota" / "quota.db")}}
    namespace = request.getfixturevalue("pg_namespace")
    return {"postgres": {**PG, "namespace": namespace, "max_connections": 8}}


def limiter(name: str, type_: str = "user_limiter", initial: int = 1000, increase: int = 0,
            period: str | int = "1 day") -> dict[str, Any]:
    return {"name": name, "type": type_, "initial_quota": initial, "quota_increase": increase,
            "period": period}


def quota_settings(storage: dict[str, Any], limiters: list[dict[str, Any]],
                   **extra: Any) -> Settings:
    """A validated `quota_handlers` section, as the core hands it to the plugin."""
    raw = {**storage, "limiters": limiters, "reservation_tokens": 100,
           "reservation_chars_per_token": 0, **extra}
    return Settings.wrap(QuotaHandlersSchema().load(raw))


class Clock:
    """The time the quota code sees; tests move it."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_quota(clock: Clock) -> AsyncIterator[Any]:
    """`make_quota(settings)`: a set-up `Quota` on the driven clock, closed afterwards."""
    made: list[Quota] = []

    async def make(settings: Settings) -> Quota:
        quota = Quota(settings, clock=clock)
        assert await quota.setup()
        made.append(quota)
        return quota

    yield make
    for quota in made:
        await quota.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    """PostgreSQL behind a loopback proxy: `cut()` drops it, `start()` brings it back."""
    proxy = TcpProxy(PG["host"], PG["port"])
    await proxy.start()
    yield proxy
    await proxy.close()
