"""`lcore_core.PostgresPool` on the machine's real PostgreSQL: a checkout costs no statement, and a
connection the server ended is dropped at checkout, not handed out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from lcore_core import PostgresPool

SENT: list[str] = []


class CountingCursor(psycopg2.extensions.cursor):
    """Every statement sent on the pool's connections, peewee's and the pool's own alike."""

    def execute(self, query: Any, vars: Any = None) -> Any:
        SENT.append(str(query).split()[0].upper())
        return super().execute(query, vars)


@pytest.fixture
def pool() -> Iterator[PostgresPool]:
    SENT.clear()
    db = PostgresPool("test", host="127.0.0.1", port=5432, user="postgres", max_connections=4,
                      timeout=5, application_name="lcore-pgpool-test",
                      cursor_factory=CountingCursor)
    yield db
    db.close_all()


def backend_pid(db: PostgresPool) -> int:
    with db.connection_context():
        return int(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])


def test_a_checkout_sends_nothing(pool: PostgresPool) -> None:
    first = backend_pid(pool)  # the pool now holds one idle connection
    SENT.clear()
    for _ in range(3):
        assert backend_pid(pool) == first  # the same connection, reused
    # peewee's own pool sends SELECT 1 before each reuse: six statements here.
    assert SENT == ["SELECT", "SELECT", "SELECT"]


def test_a_connection_the_server_ended_is_not_handed_out(pool: PostgresPool) -> None:
    first = backend_pid(pool)
    killer = psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres")
    killer.autocommit = True
    try:
        with killer.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (first,))
            # The backend is gone once the server no longer lists it.
            for _ in range(100):
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                               (first,))
                if cursor.fetchone()[0] == 0:
                    break
                time.sleep(0.02)
    finally:
        killer.close()
    # Without a check, this would fail: "terminating connection due to administrator command".
    second = backend_pid(pool)
    assert second != first

