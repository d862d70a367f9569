"""lcore-auth-k8s against a loopback HTTPS "API server" answering TokenReview and
SubjectAccessReview with the real JSON shapes (no cluster needed)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import lcore_auth_k8s.plugin
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lcore_core import ConfigError
from lcore_core.app import create_app
from lcore_core.mcp import mcp_tools
from lcore_core.plugins import load_plugins

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
                                              if user else
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


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("k8s-certs")
    cert, key = self_signed(directory, "apiserver")
    other, _ = self_signed(directory, "someone-else")
    token = directory / "sa-token"
    token.write_text(SA_TOKEN + "\n")
    return {"cert": cert, "key": key, "other_ca": other, "sa_token": token}


@pytest.fixture
def api(certs: dict[str, Path]) -> Iterator[FakeApiServer]:
    server = FakeApiServer(certs["cert"], certs["key"])
    server.users["alice-token"] = {"username": "alice", "uid": "uid-alice",
                                   "groups": ["devs", "system:authenticated"]}
    server.users["bob-token"] = {"username": "bob", "uid": "uid-bob", "groups": ["ops"]}
    server.users["admin-token"] = {"username": "kube:admin", "uid": "",
                                   "groups": ["system:cluster-admins"]}
    server.allowed = {"alice", "kube:admin"}
    yield server
    server.close()


def k8s_config(api_url: str, certs: dict[str, Path], **extra: Any) -> dict[str, Any]:
    k8s: dict[str, Any] = {"service_account_token_path": str(certs["sa_token"])}
    k8s.update(extra)
    return {"authentication": {"module": "k8s", "k8s_cluster_api": api_url,
                               "k8s_ca_cert_path": str(certs["cert"]), "k8s_config": k8s}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def whoami(client: Any, token: str) -> tuple[int, dict[str, Any]]:
    response = await client.post("/v1/authorized", headers=bearer(token))
    return response.status_code, await response.get_json()


async def test_selected_by_yaml_through_entry_point(api: FakeApiServer, certs: dict[str, Path],
                                                   write_config: Any, serving: Any) -> None:
    plugins = load_plugins()
    assert "k8s" in plugins.auth_providers()
    assert plugins.owner("auth provider", "k8s") == "auth_k8s"
    assert plugins.distribution_of("auth_k8s") == "lcore-auth-k8s"
    app = create_app(write_config(k8s_config(api.url, certs)), plugins=plugins)
    async with serving(app) as client:
        status, body = await whoami(client, "alice-token")
        assert status == 200, body
        assert body == {"user_id": "uid-alice", "username": "alice", "skip_userid_check": False}
    # The real request shapes, sent with LCore's service-account credential.
    review, access = api.bodies[0], api.bodies[1]
    assert review == {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": "alice-token"}}
    assert access["kind"] == "SubjectAccessReview"
    assert access["spec"] == {"user": "alice", "groups": ["devs", "system:authenticated"],
                              "nonResourceAttributes": {"path": "/ls-access", "verb": "get"}}
    assert api.credentials == [f"Bearer {SA_TOKEN}"] * 2


async def test_refusals(api: FakeApiServer, certs: dict[str, Path], make_app: Any,
                        serving: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(k8s_config(api.url, certs), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        status, body = await whoami(client, "forged-token")
        assert status == 401 and "Invalid or expired Kubernetes token" in body["detail"]["cause"]
        status, body = await whoami(client, "bob-token")   # a valid token, SAR says no
        assert status == 403, body
        assert "SubjectAccessReview denied" in body["detail"]["cause"]
        response = await client.post("/v1/authorized")
        assert response.status_code == 401
        response = await client.post("/v1/authorized",
                                     headers={"Authorization": "Basic YWxpY2U6cHc="})
        assert response.status_code == 401
        huge = await client.post("/v1/authorized", headers=bearer("x" * (1024 * 1024)))
        assert huge.status_code == 401
    assert api.hits[TOKEN_REVIEW] == 2  # the header-less, Basic and huge ones never got there
    for token in ("forged-token", "bob-token", "alice-token", SA_TOKEN):
        assert token not in caplog.text


async def test_cache_ttl_and_revocation(api: FakeApiServer, certs: dict[str, Path],
                                        make_app: Any, serving: Any) -> None:
    app = make_app(k8s_config(api.url, certs, cache_ttl_seconds=1), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await whoami(client, "alice-token"))[0] == 200
        assert api.hits[TOKEN_REVIEW] == 1 and api.hits[ACCESS_REVIEW] == 1
        assert (await whoami(client, "alice-token"))[0] == 200
        assert (await whoami(client, "bob-token"))[0] == 403
        assert (await whoami(client, "bob-token"))[0] == 403   # the denial is cached too
        assert api.hits[TOKEN_REVIEW] == 2 and api.hits[ACCESS_REVIEW] == 2
        del api.users["alice-token"]                           # revoked in the cluster
        assert (await whoami(client, "alice-token"))[0] == 200  # still within the TTL
        await asyncio.sleep(1.1)
        status, _ = await whoami(client, "alice-token")
        assert status == 401
        assert api.hits[TOKEN_REVIEW] == 3


async def test_cache_disabled(api: FakeApiServer, certs: dict[str, Path], make_app: Any,
                              serving: Any) -> None:
    app = make_app(k8s_config(api.url, certs, cache_ttl_seconds=0), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        for _ in range(3):
            assert (await whoami(client, "alice-token"))[0] == 200
    assert api.hits[TOKEN_REVIEW] == 3


async def test_groups_become_roles(api: FakeApiServer, certs: dict[str, Path], make_app: Any,
                                   serving: Any) -> None:
    config = k8s_config(api.url, certs, group_roles={"devs": ["developer"]})
    config["authorization"] = {"access_rules": [{"role": "developer", "actions": ["get_config"]},
                                                {"role": "devs", "actions": ["info"]}]}
    api.allowed.add("bob")
    app = make_app(config, lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await client.get("/v1/config", headers=bearer("alice-token"))).status_code == 200
        assert (await client.get("/v1/info", headers=bearer("alice-token"))).status_code == 200
        assert (await client.get("/v1/config", headers=bearer("bob-token"))).status_code == 403
        assert (await client.get("/v1/info", headers=bearer("bob-token"))).status_code == 403


async def test_kube_admin_is_identified_by_cluster(api: FakeApiServer, certs: dict[str, Path],
                                                   make_app: Any, serving: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(k8s_config(api.url, certs), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        status, body = await whoami(client, "admin-token")
        assert status == 200 and body["user_id"] == "local"  # not in a cluster: as upstream
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "1")
    app = make_app(k8s_config(api.url, certs), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        status, body = await whoami(client, "admin-token")
        assert status == 200, body
        assert body == {"user_id": "cluster-1234", "username": "kube:admin",
                        "skip_userid_check": False}
    assert api.hits[CLUSTER_VERSION] == 1


async def test_api_server_down_is_503(api: FakeApiServer, certs: dict[str, Path],
                                      make_app: Any, serving: Any) -> None:
    url = api.url
    api.close()
    app = make_app(k8s_config(url, certs), lcore_auth_k8s.plugin)
    async with serving(app) as client:
        status, body = await whoami(client, "alice-token")
        assert status == 503, body
        assert body["detail"]["response"] == "Unable to connect to Kubernetes API"
        assert "unreachable" in body["detail"]["cause"]
        # Not cached: every request asks again (and still gets 503, never 200).
        assert (await whoami(client, "alice-token"))[0] == 503


async def test_untrusted_certificate_is_refused(api: FakeApiServer, certs: dict[str, Path],
                                                make_app: Any, serving: Any) -> None:
    config = k8s_config(api.url, certs)
    config["authentication"]["k8s_ca_cert_path"] = str(certs["other_ca"])
    app = make_app(config, lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await whoami(client, "alice-token"))[0] == 503
    assert api.hits[TOKEN_REVIEW] == 0
    config["authentication"]["skip_tls_verification"] = True
    app = make_app(config, lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await whoami(client, "alice-token"))[0] == 200


def test_no_api_server_is_a_config_error(make_app: Any, certs: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(certs["sa_token"].parent / "missing"))
    with pytest.raises(ConfigError, match="no Kubernetes API server"):
        make_app({"authentication": {"module": "k8s"}}, lcore_auth_k8s.plugin)


async def test_kubeconfig(api: FakeApiServer, certs: dict[str, Path], tmp_path: Path,
                          make_app: Any, serving: Any) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": api.url,
                                               "certificate-authority": str(certs["cert"])}}],
        "users": [{"name": "u", "user": {"token": "kubeconfig-token"}}]}))
    app = make_app({"authentication": {"module": "k8s",
                                       "k8s_config": {"kubeconfig": str(kubeconfig)}}},
                   lcore_auth_k8s.plugin)
    async with serving(app) as client:
        assert (await whoami(client, "alice-token"))[0] == 200
    assert api.credentials == ["Bearer kubeconfig-token"] * 2


MCP = [{"name": "cluster-tools", "url": "http://127.0.0.1:9/mcp",
        "authorization_headers": {"Authorization": "kubernetes",
                                  "X-Cluster-Token": "kubernetes"}}]


async def test_kubernetes_mcp_header_is_the_callers_token(api: FakeApiServer,
                                                          certs: dict[str, Path],
                                                          make_app: Any, serving: Any) -> None:
    config = k8s_config(api.url, certs)
    config.update(mcp_servers=MCP, service={"skip_unreachable_mcp": True})
    app = make_app(config, lcore_auth_k8s.plugin)
    async with serving(app):
        async with app.test_request_context("/v1/info", headers=bearer("alice-token")):
            from quart import request

            auth = await app.runtime.authenticator.authenticate(request)
        tools = mcp_tools(app.runtime, auth, {})
    assert tools[0]["authorization"] == "alice-token"
    assert tools[0]["headers"] == {"X-Cluster-Token": "Bearer alice-token"}
    server = app.runtime.config.mcp_servers[0]
    no_token = auth._replace(token=None)
    assert app.runtime.plugins.mcp_header_value("kubernetes", server, "X-Cluster-Token",
                                                no_token, {}) is None


def test_kubernetes_mcp_header_needs_k8s_module(make_app: Any) -> None:
    # Refused when the configuration loads, with the key that asks for it.
    with pytest.raises(ConfigError) as info:
        make_app({"mcp_servers": MCP, "service": {"skip_unreachable_mcp": True}},
                 lcore_auth_k8s.plugin)
    assert "authentication.module: k8s" in str(info.value)
    assert "mcp_servers[0].authorization_headers.Authorization" in str(info.value)


async def test_mcp_server_receives_the_callers_kubernetes_token(
        api: FakeApiServer, certs: dict[str, Path], make_app: Any, serving: Any,
        llm: Any, mcp_server: Any, llama_stack_server: Any) -> None:
    """End to end: the caller's reviewed token reaches the MCP server through Llama Stack."""
    config = k8s_config(api.url, certs)
    config["llama_stack"] = {"url": llama_stack_server.url, "timeout": 60}
    config["mcp_servers"] = [{"name": "cluster-tools", "url": mcp_server.url,
                              "authorization_headers": {"Authorization": "kubernetes"}}]
    app = make_app(config, lcore_auth_k8s.plugin)
    llm.script("cluster weather", tool_call=("get_weather", {"city": "Prague"}),
               then="Done: {tool_output}")
    async with serving(app) as client:
        response = await client.post("/v2/query", headers=bearer("alice-token"),
                                     json={"query": "cluster weather",
                                           "generate_topic_summary": False})
        assert response.status_code == 200, await response.get_data(as_text=True)
    calls = [c for c in mcp_server.tool_calls if c.arguments == {"city": "Prague"}]
    assert calls, "the MCP tool was not called"
    sent = {k.lower(): v for k, v in calls[-1].headers.items()}
    assert sent["authorization"] == "Bearer alice-token"
