"""Two LCore processes on one PostgreSQL limiter consume exactly the sum of their tokens."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from lcore_quota.quota import Quota

from .conftest import PG, limiter, quota_settings

REPO = Path(__file__).resolve().parents[3]
REQUESTS = 150


def test_two_processes_share_one_budget_exactly(pg_namespace: str) -> None:
    settings = quota_settings(
        {"postgres": {**PG, "namespace": pg_namespace, "max_connections": 6}},
        [limiter("user", initial=1_000_000), limiter("cluster", "cluster_limiter",
                                                      initial=5_000_000)])
    children = [subprocess.Popen(
        [sys.executable, "-m", "tests.plugins.quota.hammer", json.dumps(settings),
         str(REQUESTS), str(seed)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for seed in (1, 2)]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready", child.stderr
        for child in children:  # both go at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        spent = 0
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            spent += int(out.strip().splitlines()[-1])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert spent > 0

    async def status() -> dict[str, int]:
        quota = Quota(settings)
        try:
            return await quota.status("shared-user")
        finally:
            await quota.close()

    assert asyncio.run(status()) == {"user": 1_000_000 - spent, "cluster": 5_000_000 - spent}
