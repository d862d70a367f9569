"""The quota contract (`lcore_core.testing.storage_contract.QuotaContract`) on lcore-quota, on
a real SQLite file and a real PostgreSQL schema (two services on one store are two replicas)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from lcore_quota.config import QuotaHandlersSchema
from lcore_quota.quota import Quota

from lcore_core import Settings
from lcore_core.testing.storage_contract import QuotaClock, QuotaContract


class TestQuotaContract(QuotaContract):
    @pytest.fixture
    async def make_quota(self, storage: dict[str, Any]) -> AsyncIterator[Any]:
        made: list[Quota] = []

        async def make(section: dict[str, Any], clock: QuotaClock) -> Quota:
            settings = Settings.wrap(QuotaHandlersSchema().load({**storage, **section}))
            quota = Quota(settings, clock=clock)
            assert await quota.setup()
            made.append(quota)
            return quota

        yield make
        for quota in made:
            await quota.close()
