"""A pool of PostgreSQL connections whose checkout costs no round trip to the server.

peewee's `PooledPostgresqlDatabase` sends `SELECT 1` on every checkout of an idle connection to
learn whether the server still holds it, and it does so while holding the database's lock: with
one statement per call (the quota and cache plugins), that doubled the round trips and made
every worker thread queue behind the one checking. `PostgresPool` asks the socket instead. A
server that ended the session (restart, `pg_terminate_backend`, idle timeout) has sent its
goodbye and closed the socket, which is then readable; a healthy idle connection has nothing to
read. A connection that went silent without closing (a network cut) is found out by its first
statement, as it could be after a `SELECT 1` too. A healthy session with something unread (a
server-sent notice) is dropped as well: the price of that mistake is one new connection.
"""

from __future__ import annotations

from typing import Any

from playhouse.pool import PooledPostgresqlDatabase

from lcore_core.storage.postgres import quiet


class PostgresPool(PooledPostgresqlDatabase):
    """`PooledPostgresqlDatabase` whose idle connections are checked locally at checkout."""

    def _is_closed(self, conn: Any) -> bool:
        if conn.closed:
            return True
        # peewee rolls a connection back when it returns to the pool: one found in any state
        # but idle here is not one to trust.
        if self._adapter.txn_status(conn) == self._adapter.txn_idle and quiet(conn.fileno()):
            return False
        conn.close()  # the pool drops it without closing it
        return True
