"""`POST /v1/infer` end to end: a real Llama Stack (the scripted LLM behind it), a real loopback
Splunk HEC receiver, real quota storage. Request bodies follow upstream's rlsapi v1 schema."""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.server
import json
import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.errors import invalid_fields
from lcore_core.testing.llm import UNSAFE_MARKER, message_text
from lcore_core.testing.tcp_proxy import TcpProxy

from .support import Lcore, lcore_config, started

pytestmark = pytest.mark.e2e

# A request as the command-line assistant sends it (upstream's RlsapiV1InferRequest).
CLA_BODY = {
    "question": "  Why does my service fail to start?  ",
    "context": {
        "stdin": "piped: journalctl output",
        "attachments": {"contents": "[Unit]\nDescription=demo", "mimetype": "text/plain"},
        "terminal": {"output": "Job for demo.service failed"},
        "systeminfo": {"os": "RHEL", "version": "9.3", "arch": "x86_64",
                       "id": "01JDKR8N7QW9ZMXVGK3PB5TQWZ"},
        "cla": {"nevra": "command-line-assistant-0:0.2.0-1.el9.noarch", "version": "0.2.0"},
    },
    "skip_rag": False,
}
CLA_AGENT = "CLA/0.2.0"
SYSTEM_IDENTITY = {"identity": {"type": "System", "org_id": "org-7", "account_number": "42",
                                "system": {"cn": "sys-cn-1"}}}
USER_IDENTITY = {"identity": {"type": "User", "org_id": "org-7", "account_number": "42",
                              "user": {"user_id": "user-1", "username": "alice"}}}


def rh_header(identity: dict[str, Any]) -> dict[str, str]:
    return {"X-RH-Identity": base64.b64encode(json.dumps(identity).encode()).decode()}


# --- a loopback Splunk HEC receiver ------------------------------------------------------------


class HecReceiver:
    """A real HTTP(S) server that records what is POSTed to it, as Splunk's HEC would."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        received = self.events

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append({"path": self.path, "headers": dict(self.headers),
                                 "body": json.loads(self.rfile.read(length))})
                answer = b'{"text":"Success","code":0}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/services/collector"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HecReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed(tmp: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "hec.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "hec.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "hec.crt", tmp / "hec.key")
    return context


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(check: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    """Wait for background work (the exporter) to show its effect; fail after `limit_s`."""
    for _ in range(int(limit_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def splunk_section(url: str, token: Path, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "url": url, "token_path": str(token), "index": "rhel_lls",
            "source": "lcore-e2e", "timeout": 2, **extra}


@pytest.fixture(scope="module")
def hec() -> Iterator[HecReceiver]:
    with HecReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hec") / "token"
    path.write_text("hec-token-123\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
async def cla(tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any,
              hec: HecReceiver, token_file: Path) -> AsyncIterator[Any]:
    """rh-identity auth, verbose answers allowed, Splunk on, a deployment name."""
    workdir = tmp_path_factory.mktemp("rlsapi-cla")
    config = lcore_config(
        workdir, "server", llama_stack_server.url,
        authentication={"module": "rh-identity"},
        rlsapi_v1={"allow_verbose_infer": True},
        deployment_environment="e2e-staging",
        customization={"system_prompt": "Help with {{ os }} {{ version }} on {{ arch }}."},
        splunk=splunk_section(hec.url, token_file))
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        app.client = test_app.test_client()  # type: ignore[attr-defined]
        yield app


def infer_requests(llm: Any) -> list[Any]:
    return [r for r in llm.chat_requests if "Why does my service" in json.dumps(r.messages)]


# --- the answer --------------------------------------------------------------------------------


async def test_answer_in_both_modes(lcore: Lcore, llm: Any) -> None:
    response = await lcore.client.post("/v1/infer", json={"question": "How do I list files?"})
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert set(body) == {"data"}
    assert set(body["data"]) == {"text", "request_id"}
    assert body["data"]["text"].startswith("Scripted answer to: How do I list files?")
    # A stateless call: every request is a first turn and no conversation is kept.
    assert "(user turns: 1)" in body["data"]["text"]
    [sent] = [r for r in llm.chat_requests if "How do I list files?" in json.dumps(r.messages)]
    assert sum(m["role"] == "user" for m in sent.messages) == 1


async def test_no_conversation_is_kept(lcore: Lcore, llm: Any) -> None:
    async def conversations() -> int:
        listed = await (await lcore.client.get("/v2/conversations")).get_json()
        return len(listed["conversations"])

    before = await conversations()
    response = await lcore.client.post("/v1/infer", json={"question": "stateless?"})
    assert response.status_code == 200
    assert await conversations() == before


async def test_cla_request_answers_with_context(cla: Any, llm: Any, hec: HecReceiver) -> None:
    hec.events.clear()
    response = await cla.client.post("/v1/infer", json=CLA_BODY,
                                     headers={**rh_header(SYSTEM_IDENTITY),
                                              "User-Agent": CLA_AGENT})
    assert response.status_code == 200, await response.get_data(as_text=True)
    data = (await response.get_json())["data"]
    assert set(data) == {"text", "request_id"}  # include_metadata not asked for
    assert data["text"].startswith("Scripted answer to: Why does my service fail to start?")
    [sent] = infer_requests(llm)
    user = [m for m in sent.messages if m["role"] == "user"]
    # Question (stripped), stdin, attachment, terminal output: upstream's order, blank lines.
    assert message_text(user[-1]) == ("Why does my service fail to start?\n\n"
                                      "piped: journalctl output\n\n[Unit]\nDescription=demo\n\n"
                                      "Job for demo.service failed")
    system = [message_text(m) for m in sent.messages if m["role"] == "system"]
    assert "Help with RHEL 9.3 on x86_64." in system


async def test_verbose_answer_when_allowed_and_asked(cla: Any, llm: Any) -> None:
    response = await cla.client.post("/v1/infer", json={**CLA_BODY, "include_metadata": True},
                                     headers=rh_header(USER_IDENTITY))
    data = (await response.get_json())["data"]
    assert response.status_code == 200
    assert data["input_tokens"] > 0 and data["output_tokens"] > 0
    for key in ("tool_calls", "tool_results", "rag_chunks", "referenced_documents"):
        assert data[key] == []


async def test_include_metadata_ignored_unless_allowed(lcore: Lcore, llm: Any) -> None:
    response = await lcore.client.post("/v1/infer", json={"question": "verbose please",
                                                          "include_metadata": True})
    assert set((await response.get_json())["data"]) == {"text", "request_id"}


# --- bad requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({}, "question"),
    ({"question": ""}, "question"),
    ({"question": "   \n "}, "question"),
    ({"question": "x" * 32_769}, "question"),
    ({"question": "q", "extra": 1}, "extra"),
    ({"question": "q", "context": {"stdin": "x" * 65_537}}, "context.stdin"),
    ({"question": "q", "context": {"terminal": {"output": "x" * 65_537}}},
     "context.terminal.output"),
    ({"question": "q", "context": {"attachments": {"contents": "x" * 65_537}}},
     "context.attachments.contents"),
    ({"question": "q", "context": {"attachments": {"mimetype": "x" * 257}}},
     "context.attachments.mimetype"),
    ({"question": "q", "context": {"systeminfo": {"os": "<script>"}}}, "context.systeminfo.os"),
    ({"question": "q", "context": {"systeminfo": {"id": "a b"}}}, "context.systeminfo.id"),
    ({"question": "q", "context": {"cla": {"nevra": "bad;name"}}}, "context.cla.nevra"),
    ({"question": "q", "context": {"systeminfo": {"hostname": "h"}}},
     "context.systeminfo.hostname"),
    ({"question": "q", "include_metadata": "perhaps"}, "include_metadata"),
])
async def test_invalid_body_is_422_naming_the_field(lcore: Lcore, llm: Any, body: dict[str, Any],
                                                    field: str) -> None:
    response = await lcore.client.post("/v1/infer", json=body)
    assert response.status_code == 422
    assert field in invalid_fields(await response.get_json())
    assert not llm.chat_requests


async def test_system_id_by_its_field_name(lcore: Lcore, llm: Any) -> None:
    response = await lcore.client.post("/v1/infer", json={
        "question": "q", "context": {"systeminfo": {"system_id": "abc-1"}}})
    assert response.status_code == 200


# --- authorization and quota -------------------------------------------------------------------


async def test_forbidden_without_the_action(tmp_path: Path, llama_stack_server: Any,
                                            llm: Any) -> None:
    config = lcore_config(tmp_path, "server", llama_stack_server.url, authorization={
        "always_apply_access_rules": True,  # noop's callers are not judged otherwise
        "access_rules": [{"role": "*", "actions": ["query"]}]})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        client = test_app.test_client()
        denied = await client.post("/v1/infer", json={"question": "may I?"})
        assert denied.status_code == 403
        assert (await denied.get_json())["detail"]["response"] == \
            "User does not have permission to access this endpoint"
        assert (await client.post("/v2/query", json={"query": "q"})).status_code == 200
    config = lcore_config(tmp_path, "server", llama_stack_server.url, authorization={
        "always_apply_access_rules": True,
        "access_rules": [{"role": "*", "actions": ["rlsapi_v1_infer"]}]})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        allowed = await test_app.test_client().post("/v1/infer", json={"question": "may I?"})
        assert allowed.status_code == 200


async def test_missing_identity_is_401(cla: Any, llm: Any) -> None:
    response = await cla.client.post("/v1/infer", json={"question": "who am I"})
    assert response.status_code == 401
    assert not llm.chat_requests


QUOTA = 2000


@pytest.fixture(scope="module", params=["org_id", "system_id"])
async def metered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  llama_stack_server: Any) -> AsyncIterator[Any]:
    workdir = tmp_path_factory.mktemp("rlsapi-quota")
    quota = {"sqlite": {"db_path": str(workdir / "quota.db")},
             "limiters": [{"name": "daily", "type": "user_limiter", "initial_quota": QUOTA,
                           "quota_increase": 0, "period": "1 day"}],
             "reservation_tokens": 10, "reservation_chars_per_token": 0}
    config = lcore_config(workdir, "server", llama_stack_server.url,
                          authentication={"module": "rh-identity"},
                          rlsapi_v1={"quota_subject": request.param, "allow_verbose_infer": True},
                          quota_handlers=quota)
    app = create_app(config, plugins=load_plugins())
    async with started(app) as test_app:
        app.client = test_app.test_client()  # type: ignore[attr-defined]
        app.subject = request.param  # type: ignore[attr-defined]
        yield app


async def test_quota_charged_to_the_configured_subject(metered: Any, llm: Any) -> None:
    quota = metered.runtime.state["lcore-quota"]
    response = await metered.client.post("/v1/infer", json={**CLA_BODY, "include_metadata": True},
                                         headers=rh_header(SYSTEM_IDENTITY))
    assert response.status_code == 200, await response.get_data(as_text=True)
    data = (await response.get_json())["data"]
    spent = data["input_tokens"] + data["output_tokens"]
    subject = "org-7" if metered.subject == "org_id" else "sys-cn-1"
    assert await quota.status(subject) == {"daily": QUOTA - spent}
    other = "sys-cn-1" if subject == "org-7" else "org-7"
    assert await quota.status(other) == {"daily": QUOTA}


async def test_exhausted_subject_is_429(metered: Any, llm: Any) -> None:
    from lcore_core import AuthTuple
    from lcore_core.events import QuotaTicket, Usage

    quota = metered.runtime.state["lcore-quota"]
    identity = json.loads(json.dumps(SYSTEM_IDENTITY))
    identity["identity"]["org_id"] = "org-spent"
    identity["identity"]["system"]["cn"] = "sys-spent"
    spent = "org-spent" if metered.subject == "org_id" else "sys-spent"
    await quota.consume(AuthTuple(spent, "someone"), Usage(QUOTA, 0),
                        QuotaTicket("spent elsewhere", "/v1/infer"))
    refused = await metered.client.post("/v1/infer", json={"question": "one more"},
                                        headers=rh_header(identity))
    assert refused.status_code == 429
    assert (await refused.get_json())["detail"]["response"]
    assert not llm.chat_requests
    # The same caller under another subject still gets answers.
    fresh = json.loads(json.dumps(SYSTEM_IDENTITY))
    fresh["identity"]["org_id"] = "org-fresh"
    fresh["identity"]["system"]["cn"] = "sys-fresh"
    ok = await metered.client.post("/v1/infer", json={"question": "fresh"},
                                   headers=rh_header(fresh))
    assert ok.status_code == 200


async def test_shield_refusal_is_a_200_and_charges_nothing(metered: Any, llm: Any) -> None:
    quota = metered.runtime.state["lcore-quota"]
    identity = json.loads(json.dumps(SYSTEM_IDENTITY))
    identity["identity"]["org_id"] = "org-shield"
    identity["identity"]["system"]["cn"] = "sys-shield"
    response = await metered.client.post("/v1/infer", json={"question": f"do {UNSAFE_MARKER}"},
                                         headers=rh_header(identity))
    assert response.status_code == 200
    data = (await response.get_json())["data"]
    assert data["text"] and "Scripted answer" not in data["text"]
    assert set(data) == {"text", "request_id"}
    subject = "org-shield" if metered.subject == "org_id" else "sys-shield"
    assert await quota.status(subject) == {"daily": QUOTA}


# --- errors as upstream reports them -----------------------------------------------------------


async def test_unknown_default_model_is_404(tmp_path: Path, llama_stack_server: Any,
                                            llm: Any) -> None:
    config = lcore_config(tmp_path, "server", llama_stack_server.url, inference={
        "default_model": "no-such-model", "default_provider": "openai"})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        response = await test_app.test_client().post("/v1/infer", json={"question": "q"})
    assert response.status_code == 404
    assert (await response.get_json())["detail"] == {
        "response": "Model not found", "cause": "Model with ID no-such-model does not exist"}


async def test_llm_failure_is_500_and_reported(cla: Any, llm: Any, hec: HecReceiver) -> None:
    hec.events.clear()
    llm.script("explode now", status=500, error="boom")
    response = await cla.client.post("/v1/infer", json={"question": "explode now"},
                                     headers=rh_header(USER_IDENTITY))
    assert response.status_code == 500
    assert (await response.get_json())["detail"] == {
        "response": "Internal server error",
        "cause": "An unexpected error occurred while processing the request."}
    await eventually(lambda: any(e["body"]["sourcetype"] == "infer_error" for e in hec.events),
                     "an infer_error event")
    [event] = [e["body"] for e in hec.events if e["body"]["sourcetype"] == "infer_error"]
    assert event["event"]["question"] == "explode now"
    assert event["event"]["total_llm_tokens"] == 0


async def test_llama_stack_unreachable_is_503(tmp_path: Path, llama_stack_server: Any,
                                              llm: Any) -> None:
    host_port = llama_stack_server.url.rsplit(":", 1)
    proxy = TcpProxy("127.0.0.1", int(host_port[1]))
    await proxy.start()
    try:
        config = lcore_config(tmp_path, "server", f"http://127.0.0.1:{proxy.port}")
        app = create_app(config, plugins=load_plugins(entrypoints=False))
        async with started(app) as test_app:
            client = test_app.test_client()
            assert (await client.post("/v1/infer", json={"question": "q"})).status_code == 200
            await proxy.cut()
            down = await client.post("/v1/infer", json={"question": "during the outage"})
            assert down.status_code == 503
            assert (await down.get_json())["detail"]["response"] == \
                "Unable to connect to OGX"
    finally:
        await proxy.close()


async def test_bad_prompt_template_is_500(tmp_path: Path, llama_stack_server: Any,
                                          llm: Any) -> None:
    config = lcore_config(tmp_path, "server", llama_stack_server.url,
                          customization={"system_prompt": "Broken {% if %} template"})
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        response = await test_app.test_client().post("/v1/infer", json={"question": "q"})
    assert response.status_code == 500
    assert (await response.get_json())["detail"]["response"] == "Internal server error"
    assert not llm.chat_requests


# --- Splunk HEC --------------------------------------------------------------------------------


async def test_answer_event_reaches_splunk(cla: Any, llm: Any, hec: HecReceiver) -> None:
    hec.events.clear()
    response = await cla.client.post("/v1/infer", json=CLA_BODY,
                                     headers={**rh_header(SYSTEM_IDENTITY),
                                              "User-Agent": CLA_AGENT})
    data = (await response.get_json())["data"]
    await eventually(lambda: len(hec.events) == 1, "one HEC event")
    [received] = hec.events
    assert received["path"] == "/services/collector"
    assert received["headers"]["Authorization"] == "Splunk hec-token-123"
    body = received["body"]
    assert body["sourcetype"] == "infer_with_llm"
    assert body["index"] == "rhel_lls"
    assert body["source"].startswith("lcore-e2e (v")
    assert isinstance(body["time"], int) and body["host"]
    event = body["event"]
    assert event["question"] == "Why does my service fail to start?"
    assert event["response"] == data["text"]
    assert event["request_id"] == data["request_id"]
    assert event["deployment"] == "e2e-staging"
    assert event["org_id"] == "org-7" and event["system_id"] == "sys-cn-1"
    assert event["cla_version"] == CLA_AGENT
    assert (event["system_os"], event["system_version"], event["system_arch"]) == \
        ("RHEL", "9.3", "x86_64")
    assert event["total_llm_tokens"] > 0
    assert event["refined_questions"] == [] and event["context"] == ""
    assert event["inference_time"] >= 0 and event["model"]


async def test_shield_block_event(cla: Any, llm: Any, hec: HecReceiver) -> None:
    hec.events.clear()
    response = await cla.client.post("/v1/infer", json={"question": f"{UNSAFE_MARKER} now"},
                                     headers=rh_header(USER_IDENTITY))
    assert response.status_code == 200
    await eventually(lambda: len(hec.events) == 1, "one HEC event")
    body = hec.events[0]["body"]
    assert body["sourcetype"] == "infer_shield_blocked"
    assert body["event"]["response"] == (await response.get_json())["data"]["text"]
    assert body["event"]["inference_time"] == 0.0
    # A User identity: its own id is reported as the system id, as upstream does.
    assert (body["event"]["org_id"], body["event"]["system_id"]) == ("org-7", "user-1")


def _counter(metrics: str, outcome: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'lcore_splunk_events_total{{outcome="{outcome}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_receiver_down_does_not_fail_the_answer(
        tmp_path: Path, llama_stack_server: Any, llm: Any, token_file: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/services/collector"
    config = lcore_config(tmp_path, "server", llama_stack_server.url,
                          splunk=splunk_section(url, token_file))
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    caplog.set_level(logging.WARNING, logger="lcore.splunk")
    async with started(app) as test_app:
        client = test_app.test_client()
        response = await client.post("/v1/infer", json={"question": "is splunk up?"})
        assert response.status_code == 200
        assert (await response.get_json())["data"]["text"].startswith("Scripted answer")

        async def failed() -> float:
            return _counter(await (await client.get("/metrics")).get_data(as_text=True),
                            "failed")

        for _ in range(400):
            if await failed() >= 1:
                break
            await asyncio.sleep(0.05)
        assert await failed() == 1
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    assert any(m.get("event") == "splunk event not delivered" and m.get("url") == url
               for m in logged), logged


@pytest.mark.parametrize("verify", [False, True])
async def test_tls_receiver_and_verify_ssl(tmp_path: Path, llama_stack_server: Any, llm: Any,
                                           token_file: Path, verify: bool) -> None:
    with HecReceiver(tls=self_signed(tmp_path)) as receiver:
        config = lcore_config(tmp_path, "server", llama_stack_server.url,
                              splunk=splunk_section(receiver.url, token_file, verify_ssl=verify))
        app = create_app(config, plugins=load_plugins(entrypoints=False))
        async with started(app) as test_app:
            client = test_app.test_client()
            response = await client.post("/v1/infer", json={"question": "over TLS"})
            assert response.status_code == 200
            outcome = "failed" if verify else "sent"
            for _ in range(400):
                metrics = await (await client.get("/metrics")).get_data(as_text=True)
                if _counter(metrics, outcome) >= 1:
                    break
                await asyncio.sleep(0.05)
            assert _counter(metrics, outcome) == 1
        # Self-signed: accepted only when verification is off.
        assert len(receiver.events) == (0 if verify else 1)


async def test_no_events_when_splunk_is_off(lcore: Lcore, llm: Any) -> None:
    response = await lcore.client.post("/v1/infer", json={"question": "quiet"})
    assert response.status_code == 200
    assert "lcore.splunk" not in lcore.runtime.state


async def test_configured_shields_apply_to_infer(tmp_path: Path, llama_stack_server: Any,
                                                 llm: Any) -> None:
    """The `shields:` section works on /v1/infer as on /v2/query: what the LLM receives is
    redacted, and an off-topic question gets the fixed answer without the answer's call."""
    from .test_shields import OFF_TOPIC_ANSWER, SHIELDS, SSN, on_topic

    config = lcore_config(tmp_path, "server", llama_stack_server.url, shields=SHIELDS)
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        client = test_app.test_client()
        refused = await client.post("/v1/infer", json={"question": "bake a cake infer"})
        assert refused.status_code == 200
        assert (await refused.get_json())["data"]["text"] == OFF_TOPIC_ANSWER
        assert not [r for r in llm.chat_requests
                    if "bake a cake infer" in json.dumps(r.messages)
                    and "Is this about LCore" not in json.dumps(r.messages)]
        question = on_topic(f"my number is {SSN} infer")
        answered = await client.post("/v1/infer", json={"question": question})
        assert answered.status_code == 200, await answered.get_json()
        sent = [json.dumps(r.messages) for r in llm.chat_requests if "infer" in
                json.dumps(r.messages)]
        assert sent and all(SSN not in s for s in sent) and any("[SSN]" in s for s in sent)
