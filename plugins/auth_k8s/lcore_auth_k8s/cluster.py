"""Where the Kubernetes API server is and how LCore authenticates to it.

Order, as upstream: the in-cluster service-account files, else a kubeconfig; then
`authentication.k8s_cluster_api` overrides the address and `k8s_ca_cert_path` the CA bundle.
"""

from __future__ import annotations

import base64
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcore_core import ConfigError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SA_TOKEN = SA_DIR / "token"
SA_CA = SA_DIR / "ca.crt"
TOKEN_REREAD_S = 60.0  # projected service-account tokens rotate; re-read them now and then


def running_in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ and "KUBERNETES_SERVICE_PORT" in os.environ


@dataclass
class Cluster:
    server: str
    verify: ssl.SSLContext | bool
    token_file: Path | None = None
    token: str | None = None
    _read_at: float = field(default=float("-inf"), repr=False)

    def credential(self) -> str | None:
        """LCore's own bearer token for the API server (never the caller's)."""
        if self.token_file is not None and (
                time.monotonic() - self._read_at > TOKEN_REREAD_S or self.token is None):
            try:
                self.token = self.token_file.read_text(encoding="utf-8").strip() or None
            except OSError:
                self.token = None
            self._read_at = time.monotonic()
        return self.token


def _kubeconfig(path: Path) -> dict[str, Any]:
    """server, CA and token of the current context of a kubeconfig file."""
    from ruamel.yaml import YAML

    try:
        doc = YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}
        name = doc["current-context"]
        context = next(c["context"] for c in doc["contexts"] if c["name"] == name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
        user = next((u.get("user") or {} for u in doc.get("users") or []
                     if u["name"] == context.get("user")), {})
    except (OSError, KeyError, TypeError, StopIteration, ValueError) as exc:
        raise ConfigError(f"cannot read kubeconfig {str(path)!r}: {type(exc).__name__}: {exc}",
                          key="authentication.k8s_config.kubeconfig") from None
    result: dict[str, Any] = {"server": cluster.get("server"),
                              "insecure": bool(cluster.get("insecure-skip-tls-verify"))}
    if cluster.get("certificate-authority-data"):
        result["ca_data"] = base64.b64decode(cluster["certificate-authority-data"]).decode()
    elif cluster.get("certificate-authority"):
        result["ca_file"] = str((path.parent / cluster["certificate-authority"]).resolve())
    if user.get("token"):
        result["token"] = user["token"]
    elif user.get("tokenFile"):
        result["token_file"] = Path(user["tokenFile"])
    return result


def resolve_cluster(authentication: Any, settings: dict[str, Any]) -> Cluster:
    server: str | None = None
    ca_file: str | None = None
    ca_data: str | None = None
    insecure = False
    token: str | None = None
    token_file: Path | None = Path(settings["service_account_token_path"])
    kubeconfig = settings.get("kubeconfig") or os.environ.get("KUBECONFIG")
    if running_in_cluster():
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        server = f"https://{f'[{host}]' if ':' in host else host}:{port}"
        ca_file = str(SA_CA) if SA_CA.is_file() else None
    elif kubeconfig and Path(kubeconfig).expanduser().is_file():
        found = _kubeconfig(Path(kubeconfig).expanduser())
        server, ca_file, ca_data = found["server"], found.get("ca_file"), found.get("ca_data")
        insecure = found["insecure"]
        token = found.get("token")
        if token or found.get("token_file"):
            token_file = found.get("token_file")
    if authentication.get("k8s_cluster_api"):
        server = authentication["k8s_cluster_api"]
    if authentication.get("k8s_ca_cert_path"):
        ca_file, ca_data = authentication["k8s_ca_cert_path"], None
    if not server:
        raise ConfigError("no Kubernetes API server: set authentication.k8s_cluster_api, run "
                          "in a cluster, or give a kubeconfig (authentication.k8s_config."
                          "kubeconfig or $KUBECONFIG)", key="authentication.k8s_cluster_api")
    verify: ssl.SSLContext | bool
    if authentication.get("skip_tls_verification") or insecure:
        verify = False
    else:
        verify = ssl.create_default_context(cafile=ca_file, cadata=ca_data) \
            if (ca_file or ca_data) else ssl.create_default_context()
    return Cluster(server.rstrip("/"), verify, token_file=token_file, token=token)
