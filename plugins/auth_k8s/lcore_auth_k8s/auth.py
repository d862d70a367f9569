"""`k8s`: the bearer token is reviewed by the API server (TokenReview), then access is checked
with a SubjectAccessReview on a non-resource URL. Decisions are cached for `cache_ttl_seconds`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lcore_auth_k8s.api import (
    ACCESS_REVIEW,
    CLUSTER_VERSION,
    KubeApi,
    ReviewCache,
)
from lcore_auth_k8s.cluster import Cluster, running_in_cluster
from lcore_core import AuthTuple, Forbidden, LCoreError, Unauthorized, require_bearer

if TYPE_CHECKING:
    from quart import Request

log = logging.getLogger("lcore.auth.k8s")

KUBE_ADMIN = "kube:admin"
CLUSTER_ID_LOCAL = "local"
MAX_TOKEN_BYTES = 16 * 1024


class K8sAuth:
    """Kubernetes TokenReview + SubjectAccessReview with a short-lived decision cache."""

    def __init__(self, cluster: Cluster, settings: dict[str, Any]) -> None:
        self.api = KubeApi(cluster, settings["timeout_seconds"])
        self.path: str = settings["sar_path"]
        self.verb: str = settings["sar_verb"]
        self.group_roles: dict[str, list[str]] = settings["group_roles"]
        self.groups_as_roles: bool = settings["groups_as_roles"]
        self._cluster_id: str | None = settings.get("cluster_id")
        self._cache: ReviewCache[AuthTuple] = ReviewCache(settings["cache_ttl_seconds"],
                                                          settings["cache_max_entries"])

    async def close(self) -> None:
        await self.api.close()

    async def authenticate(self, request: Request) -> AuthTuple:
        return await self._cache.outcome(bearer(request), self._review)

    async def _review(self, token: str) -> AuthTuple:
        status = await self.api.token_review(token)
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
        access = await self.api.call("POST", ACCESS_REVIEW, {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": username, "groups": groups,
                     "nonResourceAttributes": {"path": self.path, "verb": self.verb}}})
        if not (access.get("status") or {}).get("allowed"):
            log.info("k8s: SubjectAccessReview denied %s %s for %s", self.verb, self.path, uid)
            raise Forbidden("User does not have permission to access this endpoint",
                            f"User {uid} is not authorized to access this endpoint.")
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
                version = await self.api.call("GET", CLUSTER_VERSION, None)
                cluster_id = (version.get("spec") or {}).get("clusterID")
                if not isinstance(cluster_id, str) or not cluster_id.strip():
                    raise LCoreError("Internal server error",
                                     "ClusterVersion 'version' has no spec.clusterID")
                self._cluster_id = cluster_id
        return self._cluster_id


def bearer(request: Request) -> str:
    """The Bearer token of the request (401 when absent, malformed or over 16 KiB)."""
    header = request.headers.get("Authorization", "")
    if len(header) > MAX_TOKEN_BYTES:
        raise Unauthorized(cause=f"Token larger than {MAX_TOKEN_BYTES} bytes")
    return require_bearer(request)
