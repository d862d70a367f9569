"""A loopback HTTPS stand-in for the Kubernetes API server: TokenReview, SubjectAccessReview and
ClusterVersion with the real JSON shapes (no cluster needed)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SA_TOKEN = "lcore-service-account-token"
TOKEN_REVIEW = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEW = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
CLUSTER_VERSION = "/apis/config.openshift.io/v1/clusterversions/version"


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class FakeApiServer:
    """TokenReview / SubjectAccessReview / ClusterVersion over HTTPS; counts calls per path."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.users: dict[str, dict[str, Any]] = {}   # token -> status.user
        self.allowed: set[str] = set()                # usernames the SAR allows
        self.hits: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.credentials: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                owner.hits[self.path] += 1
                if self.path == CLUSTER_VERSION:
                    self._send(200, {"apiVersion": "config.openshift.io/v1",
                                     "kind": "ClusterVersion",
                                     "spec": {"clusterID": "cluster-1234"}})
                else:
                    self._send(404, {"kind": "Status", "code": 404})

            def do_POST(self) -> None:
                owner.hits[self.path] += 1
                owner.credentials.append(self.headers.get("Authorization"))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append(body)
                if self.path == TOKEN_REVIEW:
                    user = owner.users.get(body["spec"]["token"])
                    status: dict[str, Any] = ({"authenticated": True, "user": user,
                                               "audiences": ["https://kubernetes.default.svc"]}
                                              if user is not None else
                                              {"authenticated": False,
                                               "error": "token lookup failed"})
                    self._send(201, {**body, "status": status})
                elif self.path == ACCESS_REVIEW:
                    allowed = body["spec"]["user"] in owner.allowed
                    self._send(201, {**body, "status": {"allowed": allowed,
                                                        "reason": "test" if allowed else ""}})
                else:
                    self._send(404, {"kind": "Status", "code": 404})

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
