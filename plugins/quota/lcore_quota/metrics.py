"""Prometheus collectors of lcore-quota (one set per app registry)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from lcore_quota.store import Limiter

# `lcore_metrics` runs before start-up; start-up finds the collectors by the app's registry.
_BY_REGISTRY: WeakKeyDictionary[CollectorRegistry, QuotaMetrics] = WeakKeyDictionary()


class QuotaMetrics:
    def __init__(self, registry: CollectorRegistry, limiters: Iterable[Limiter]) -> None:
        labels = ["limiter", "subject_type"]
        self.limit = Gauge("ls_quota_limit_tokens",
                           "Configured token quota per subject, by limiter and subject type",
                           labels, registry=registry)
        self.available = Gauge("ls_quota_available_tokens",
                               "Tokens available, summed over the subjects of a limiter",
                               labels, registry=registry)
        self.subjects = Gauge("ls_quota_subjects", "Subjects (users, cluster) with a budget row",
                              labels, registry=registry)
        self.consumed = Counter("ls_quota_consumed_tokens",
                                "Tokens charged to quota limiters by successful LLM calls",
                                labels, registry=registry)
        self.refused = Counter("ls_quota_refused_requests",
                               "Requests refused with 429, by the limiter that refused them",
                               ["limiter"], registry=registry)
        for lim in limiters:
            subject = "cluster" if lim.is_cluster else "user"
            self.limit.labels(lim.name, subject).set(lim.initial_quota)
            self.consumed.labels(lim.name, subject)
        _BY_REGISTRY[registry] = self

    @staticmethod
    def of(registry: CollectorRegistry) -> QuotaMetrics | None:
        return _BY_REGISTRY.get(registry)
