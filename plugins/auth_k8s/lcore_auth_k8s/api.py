"""LCore's own client for the Kubernetes API server (one per authenticator), and the short-lived
cache of review outcomes both modules of this plugin keep."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from lcore_auth_k8s.cluster import Cluster
from lcore_core import BackendUnavailable, Forbidden, LCoreError, Unauthorized

log = logging.getLogger("lcore.auth.k8s")

TOKEN_REVIEW = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEW = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
CLUSTER_VERSION = "/apis/config.openshift.io/v1/clusterversions/version"
UNAVAILABLE = "Unable to connect to Kubernetes API"

class KubeApi:
    """JSON calls to the API server with LCore's service-account credential (never a caller's).

    Failures map as upstream's: unreachable, 5xx or 429 -> 503; any other 4xx -> 500 (LCore's
    own credentials or RBAC are wrong, an operator's problem rather than the caller's).
    """

    def __init__(self, cluster: Cluster, timeout: float) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self.calls = 0

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def token_review(self, token: str) -> dict[str, Any]:
        """The `status` of a TokenReview of `token` (`authenticated`, `user`, `error`)."""
        review = await self.call("POST", TOKEN_REVIEW, {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token}})
        status = review.get("status")
        return status if isinstance(status, dict) else {}

    async def call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.cluster.server,
                                             verify=self.cluster.verify, timeout=self.timeout)
        headers = {"Accept": "application/json"}
        credential = self.cluster.credential()
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        self.calls += 1
        try:
            response = await self._client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("k8s: API server %s unreachable: %s", self.cluster.server,
                        type(exc).__name__)
            raise BackendUnavailable(UNAVAILABLE, f"Kubernetes API server unreachable "
                                                  f"({type(exc).__name__})") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise BackendUnavailable(UNAVAILABLE, f"Kubernetes API unavailable (status "
                                                  f"{response.status_code})")
        if response.status_code >= 400:
            log.error("k8s: %s %s answered %s", method, path, response.status_code)
            raise LCoreError("Internal server error",
                             f"Kubernetes API request failed (status {response.status_code}); "
                             f"check the service account's permissions")
        try:
            data = response.json()
        except ValueError:
            raise BackendUnavailable(UNAVAILABLE,
                                     "Kubernetes API answered with invalid JSON") from None
        if not isinstance(data, dict):
            raise BackendUnavailable(UNAVAILABLE,
                                     "Kubernetes API answered with an unexpected document")
        return data


class ReviewCache[T]:
    """Outcomes of reviewing a token (a value, or the refusal to raise again), kept `ttl`
    seconds under the token's SHA-256; the oldest go first beyond `max_entries`.

    Only refusals (401/403) and successes are cached: an API failure is asked again next time.
    """

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, T | LCoreError]] = OrderedDict()

    @staticmethod
    def key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, key: str) -> T | LCoreError | None:
        found = self._entries.get(key)
        if found is None or found[0] <= time.monotonic():
            return None
        return found[1]

    def put(self, key: str, outcome: T | LCoreError) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (time.monotonic() + self.ttl, outcome)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


    async def outcome(self, token: str, review: Callable[[str], Awaitable[T]]) -> T:
        """`review(token)`'s value, kept: a refusal (401/403) is kept and raised again; an
        API failure (503/500) propagates and is asked again next time."""
        key = self.key(token)
        cached = self.get(key)
        if cached is not None:
            return settle(cached)
        try:
            outcome: T | LCoreError = await review(token)
        except (Unauthorized, Forbidden) as refused:
            outcome = refused
        self.put(key, outcome)
        return settle(outcome)


def settle[T](outcome: T | LCoreError) -> T:
    """A cached or fresh outcome: the value, or its refusal raised."""
    if isinstance(outcome, LCoreError):
        raise outcome
    return outcome
