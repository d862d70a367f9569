"""Upstream's tracing switch: OpenTelemetry's OTEL_* variables, from the environment or from the
`observability.otel` section, turn LCore's tracing on; /v1/config shows them redacted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.config import ConfigError
from lcore_core.plugins import load_plugins
from lcore_core.testing.otlp import SERVER, OtlpReceiver

from .support import lcore_config, started

pytestmark = pytest.mark.e2e

SECRET = f"otlp-secret-{uuid.uuid4().hex}"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)


def make_app(tmp_path: Path, llama_url: str, otel: dict[str, str] | None) -> Any:
    extra = {"observability": {"otel": otel}} if otel is not None else {}
    return create_app(lcore_config(tmp_path, "server", llama_url, **extra),
                      plugins=load_plugins())


async def traced_request(app: Any, receiver: OtlpReceiver,
                         headers: dict[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    """GET /v1/config on a started `app`; its server span, and the body."""
    async with started(app) as test_app:
        response = await test_app.test_client().get("/v1/config", headers=headers or {})
        assert response.status_code == 200
        body = await response.get_json()
        assert app.runtime.tracing is not None, "tracing is off"
        assert await asyncio.to_thread(app.runtime.tracing.provider.force_flush)
    [server] = [s for s in receiver.spans() if s.kind == SERVER
                and s.attributes.get("lcore.request_id") == response.headers["X-Request-ID"]]
    return server, body


async def test_file_otel_variables_turn_tracing_on(tmp_path, llama_stack_server, receiver):
    app = make_app(tmp_path, llama_stack_server.url, {
        "OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "from-the-file",
        "OTEL_EXPORTER_OTLP_HEADERS": f"x-collector-key={SECRET},x-tenant=acme"})
    server, body = await traced_request(app, receiver)
    assert server.resource["service.name"] == "from-the-file"
    assert server.name == "GET /v1/config"
    # The headers reached the collector, and /v1/config shows their names only.
    assert any(h.get("x-collector-key") == SECRET and h.get("x-tenant") == "acme"
               for h in receiver.headers)
    otel = body["configuration"]["observability"]["otel"]
    assert otel["OTEL_EXPORTER_OTLP_HEADERS"] == "x-collector-key=[REDACTED],x-tenant=[REDACTED]"
    assert otel["OTEL_SERVICE_NAME"] == "from-the-file"
    assert SECRET not in str(body)


async def test_environment_wins_over_the_file(tmp_path, llama_stack_server, receiver,
                                              monkeypatch):
    monkeypatch.setenv("OTEL_SDK_DISABLED", "false")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.url}/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-the-environment")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nowhere/ca.pem")
    app = make_app(tmp_path, llama_stack_server.url, {"OTEL_SERVICE_NAME": "from-the-file"})
    # The certificate only matters for https; the collector here is plain http.
    server, body = await traced_request(app, receiver, {"traceparent": TRACEPARENT})
    assert server.resource["service.name"] == "from-the-environment"
    assert server.trace_id == CALLER_TRACE  # the default propagator follows the caller
    otel = body["configuration"]["observability"]["otel"]
    assert otel["OTEL_SERVICE_NAME"] == "from-the-environment"
    assert otel["OTEL_EXPORTER_OTLP_CERTIFICATE"] == "[REDACTED]"


async def test_propagators_none_starts_a_new_trace(tmp_path, llama_stack_server, receiver):
    app = make_app(tmp_path, llama_stack_server.url, {
        "OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_PROPAGATORS": "none"})
    server, _ = await traced_request(app, receiver, {"traceparent": TRACEPARENT})
    assert server.trace_id != CALLER_TRACE
    assert server.parent_id == ""


@pytest.mark.parametrize("otel", [
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},  # SDK_DISABLED defaults to true
    {"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "none"},
])
async def test_tracing_stays_off_unless_asked(tmp_path, llama_stack_server, otel):
    app = make_app(tmp_path, llama_stack_server.url, otel)
    async with started(app):
        assert app.runtime.tracing is None


def config_errors(tmp_path: Path, otel: dict[str, str]) -> str:
    path = lcore_config(tmp_path, "server", "http://127.0.0.1:8321",
                        observability={"otel": otel})
    with pytest.raises(ConfigError) as info:
        create_app(path, plugins=load_plugins())
    return str(info.value)


@pytest.mark.parametrize(("otel", "key", "words"), [
    ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "observability.otel.OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"},
     "observability.otel.OTEL_TRACES_EXPORTER", "OTLP only"),
    ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_SAMPLER": "traceidratio",
      "OTEL_TRACES_SAMPLER_ARG": "2"}, "observability.otel.OTEL_TRACES_SAMPLER_ARG", "0 to 1"),
    ({"OTEL_SDK_DISABLED": "maybe"}, "observability.otel.OTEL_SDK_DISABLED", "true or false"),
    ({"OTEL_METRICS_EXPORTER": "otlp"}, "observability.otel.OTEL_METRICS_EXPORTER",
     "does not act on"),
    ({"otel_service_name": "x"}, "observability.otel", "not an OTEL_* variable name"),
])
def test_settings_lcore_cannot_honour_stop_start_up(tmp_path, otel, key, words):
    message = config_errors(tmp_path, otel)
    assert key in message and words in message, message
    assert "lightspeed-stack.yaml" in message


def test_an_environment_variable_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    message = config_errors(tmp_path, {"OTEL_SDK_DISABLED": "false"})
    assert "environment variable OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" in message, message


def test_too_many_variables_are_refused(tmp_path):
    otel = {f"OTEL_X_{i}": "1" for i in range(65)}
    assert "observability.otel" in config_errors(tmp_path, otel)
