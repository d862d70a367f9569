"""`k8s`: the bearer token is reviewed by the API server (TokenReview), then access is checked
with a SubjectAccessReview on a non-resource URL. Decisions are cached for `cache_ttl_seconds`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import httpx

from lcore_auth_k8s.cluster import Cluster, running_in_cluster
from lcore_core import (
    AuthTuple,
    BackendUnavailable,
    Forbidden,
    LCoreError,
    Unauthorized,
)

if TYPE_CHECKING:
    from quart import Request

log = logging.getLogger("lcore.auth.k8s")

TOKEN_REVIEW = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEW = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
CLUSTER_VERSION = "/apis/config.openshift.io/v1/clusterversions/version"
KUBE_ADMIN = "kube:admin"
CLUSTER_ID_LOCAL = "local"
MAX_TOKEN_BYTES = 16 * 1024


class K8sAuth:
    """Kubernetes TokenReview + SubjectAccessReview with a short-lived decision cache."""

    def __init__(self, cluster: Cluster, settings: dict[str, Any]) -> None:
        self.cluster = cluster
        self.ttl: float = settings["cache_ttl_seconds"]
        self.max_entries: int = settings["cache_max_entries"]
        self.path: str = settings["sar_path"]
        self.verb: str = settings["sar_verb"]
        self.group_roles: dict[str, list[str]] = settings["group_roles"]
        self.groups_as_roles: bool = settings["groups_as_roles"]
        self.timeout: float = settings["timeout_seconds"]
        self._cluster_id: str | None = settings.get("cluster_id")
        # sha256(token) -> (expires_at, AuthTuple or the refusal to raise again)
        self._cache: OrderedDict[str, tuple[float, AuthTuple | LCoreError]] = OrderedDict()
        self._client: httpx.AsyncClient | None = None
        self.api_calls = 0

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def authenticate(self, request: Request) -> AuthTuple:
        token = self._token(request)
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return self._outcome(cached[1])
        try:
            outcome: AuthTuple | LCoreError = await self._review(token)
        except (Unauthorized, Forbidden) as refused:
            outcome = refused
        # API failures (503/500) propagate above and are never cached.
        if self.ttl > 0:
            self._cache[key] = (now + self.ttl, outcome)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return self._outcome(outcome)

    @staticmethod
    def _outcome(outcome: AuthTuple | LCoreError) -> AuthTuple:
        if isinstance(outcome, LCoreError):
            raise outcome
        return outcome

    @staticmethod
    def _token(request: Request) -> str:
        header = request.headers.get("Authorization", "")
        if len(header) > MAX_TOKEN_BYTES:
            raise Unauthorized(cause=f"Token larger than {MAX_TOKEN_BYTES} bytes")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("No token found in the request",
                               "Authorization header with a Bearer token is required")
        return token.strip()

    async def _review(self, token: str) -> AuthTuple:
        review = await self._call("POST", TOKEN_REVIEW, {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token}})
        status = review.get("status") or {}
        user = status.get("user") or {}
        if not status.get("authenticated") or not user.get("username"):
            log.info("k8s: token rejected by TokenReview: %s", status.get("error") or "-")
            raise Unauthorized(cause="Invalid or expired Kubernetes token")
        username: str = user["username"]
        uid: str = user.get("uid") or username
        groups = [g for g in user.get("groups") or [] if isinstance(g, str)]
        if username == KUBE_ADMIN:
            # kube:admin has no uid of its own; as upstream it is identified by the cluster.
            uid = await self.cluster_id()
        access = await self._call("POST", ACCESS_REVIEW, {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": username, "groups": groups,
                     "nonResourceAttributes": {"path": self.path, "verb": self.verb}}})
        if not (access.get("status") or {}).get("allowed"):
            log.info("k8s: SubjectAccessReview denied %s %s for %s", self.verb, self.path, uid)
            raise Forbidden("User is not authorized to access this service",
                            f"User {uid} may not {self.verb} {self.path} "
                            f"(Kubernetes SubjectAccessReview denied)")
        return AuthTuple(uid, username, self._roles(groups), token)

    def _roles(self, groups: list[str]) -> frozenset[str]:
        roles: set[str] = set(groups) if self.groups_as_roles else set()
        for group in groups:
            roles.update(self.group_roles.get(group, ()))
        return frozenset(roles)

    async def cluster_id(self) -> str:
        if self._cluster_id is None:
            if not running_in_cluster():
                self._cluster_id = CLUSTER_ID_LOCAL
            else:
                version = await self._call("GET", CLUSTER_VERSION, None)
                cluster_id = (version.get("spec") or {}).get("clusterID")
                if not isinstance(cluster_id, str) or not cluster_id.strip():
                    raise LCoreError("Internal server error",
                                     "ClusterVersion 'version' has no spec.clusterID")
                self._cluster_id = cluster_id
        return self._cluster_id

    async def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.cluster.server,
                                             verify=self.cluster.verify, timeout=self.timeout)
        headers = {"Accept": "application/json"}
        credential = self.cluster.credential()
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        self.api_calls += 1
        try:
            response = await self._client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("k8s: API server %s unreachable: %s", self.cluster.server,
                        type(exc).__name__)
            raise BackendUnavailable("Unable to connect to Kubernetes API",
                                     f"Kubernetes API server unreachable "
                                     f"({type(exc).__name__})") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise BackendUnavailable("Unable to connect to Kubernetes API",
                                     f"Kubernetes API unavailable (status "
                                     f"{response.status_code})")
        if response.status_code >= 400:
            # LCore's own credentials or RBAC are wrong: an operator's problem, not the caller's.
            log.error("k8s: %s %s answered %s", method, path, response.status_code)
            raise LCoreError("Internal server error",
                             f"Kubernetes API request failed (status {response.status_code}); "
                             f"check the service account's permissions")
        try:
            data = response.json()
        except ValueError:
            raise BackendUnavailable("Unable to connect to Kubernetes API",
                                     "Kubernetes API answered with invalid JSON") from None
        if not isinstance(data, dict):
            raise BackendUnavailable("Unable to connect to Kubernetes API",
                                     "Kubernetes API answered with an unexpected document")
        return data
