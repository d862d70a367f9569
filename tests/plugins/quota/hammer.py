"""A child process for the two-process test: many concurrent reservations on one PostgreSQL.

Usage: python -m tests.plugins.quota.hammer '<settings json>' <requests> <seed>
Prints `ready`, waits for a line on stdin (so both processes start together), then prints the
tokens it consumed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from lcore_quota.quota import Quota

from lcore_core import AuthTuple, QuotaExceeded, QuotaTicket, Settings, Usage


async def hammer(settings: Settings, requests: int, seed: int) -> int:
    quota = Quota(settings)
    await quota.setup()
    auth = AuthTuple("shared-user", "shared-user")

    async def one(index: int) -> int:
        ticket = QuotaTicket("q", "/v2/query")
        try:
            await quota.check(auth, ticket)
        except QuotaExceeded:
            return 0
        if (index + seed) % 7 == 0:
            await quota.release(ticket)
            return 0
        spent = 1 + (index * 31 + seed) % 180  # below and above the estimate of 100
        await quota.consume(auth, Usage(spent, 0, "p", "m"), ticket)
        return spent

    print("ready", flush=True)
    sys.stdin.readline()
    spent = sum(await asyncio.gather(*(one(i) for i in range(requests))))
    await quota.close()
    return spent


if __name__ == "__main__":
    raw, count, seed = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(asyncio.run(hammer(Settings.wrap(raw), count, seed)), flush=True)
