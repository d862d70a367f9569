"""`service.tracing`: configuration, the missing-extra error, and what tracing off costs.

The spans themselves are tested end to end in tests/e2e/test_tracing.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from lcore_core import tracing
from lcore_core.config import load_config
from lcore_core.errors import ConfigError
from lcore_core.plugins import load_plugins

MISSING = re.escape("service.tracing.enabled: tracing is enabled but OpenTelemetry is not "
                    "installed; pip install 'lcore-core[tracing]'")


def hide_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every `import opentelemetry...` fail, as it does without the `tracing` extra."""
    for name in [n for n in sys.modules if n == "opentelemetry" or n.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)


def test_enabled_without_opentelemetry_names_the_key_and_the_extra(write_config, monkeypatch):
    path = write_config({"service": {"tracing": {"enabled": True}}})
    hide_opentelemetry(monkeypatch)
    with pytest.raises(ConfigError) as info:
        load_config(path, load_plugins(entrypoints=False))
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: {MISSING}", str(info.value))


def test_start_up_fails_without_opentelemetry(make_app, monkeypatch):
    hide_opentelemetry(monkeypatch)
    with pytest.raises(ConfigError, match=MISSING):
        make_app({"service": {"tracing": {"enabled": True}}})


def test_configure_refuses_a_missing_extra_too(monkeypatch):
    """A `Config` built without the loader still gets the clear message."""
    hide_opentelemetry(monkeypatch)
    with pytest.raises(ConfigError, match=MISSING) as info:
        tracing.configure({"enabled": True}, source="lightspeed-stack.yaml")
    assert info.value.file == "lightspeed-stack.yaml"


def test_disabled_without_opentelemetry_starts(make_app, monkeypatch):
    hide_opentelemetry(monkeypatch)
    app = make_app({"service": {"tracing": {"enabled": False}}})
    assert app.runtime.tracing is None


def test_enabled_with_opentelemetry_starts_a_tracer(make_app):
    app = make_app({"service": {"tracing": {"enabled": True, "sample_ratio": 0.5,
                                            "endpoint": "http://127.0.0.1:9/"}}})
    assert app.runtime.config.service.tracing == {
        "enabled": True, "endpoint": "http://127.0.0.1:9/", "service_name": "lcore",
        "sample_ratio": 0.5}
    try:
        assert app.runtime.tracing is not None
        resource = app.runtime.tracing.provider.resource.attributes
        assert resource["service.name"] == "lcore"
    finally:
        app.runtime.tracing.shutdown()


def test_otel_sdk_disabled_is_reported_at_start_up(monkeypatch):
    """OTEL_SDK_DISABLED=true silences every tracer in the process: start-up says so."""
    from structlog.testing import capture_logs

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with capture_logs() as logs:
        configured = tracing.configure({"enabled": True, "endpoint": "http://127.0.0.1:9"},
                                       source="lcore.yaml")
    assert configured is not None
    configured.shutdown()
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert "OTEL_SDK_DISABLED" in warning["event"] and warning["file"] == "lcore.yaml"


@pytest.mark.parametrize("tracing_section, message", [
    ({"sample_ratio": 1.5}, "service.tracing.sample_ratio: Must be greater than or equal to 0"),
    ({"endpoint": "collector:4318"}, "service.tracing.endpoint: Not a valid URL."),
    ({"service_name": ""}, "service.tracing.service_name: Shorter than minimum length 1."),
    ({"enable": True}, "service.tracing.enable: unknown key"),
])
def test_bad_values_name_their_key(write_config, tracing_section, message):
    path = write_config({"service": {"tracing": tracing_section}})
    with pytest.raises(ConfigError) as info:
        load_config(path, load_plugins(entrypoints=False))
    assert message in str(info.value)


def test_traces_url(monkeypatch):
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert tracing.traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert tracing.traces_url(None) == "http://127.0.0.1:4318/v1/traces"
    # OpenTelemetry's own variable: its exporter reads it (None leaves it to the exporter).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318")
    assert tracing.traces_url(None) is None
    assert tracing.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"


def test_outside_a_traced_request_spans_cost_nothing():
    assert tracing.span("lcore.anything", {"a": 1}) is tracing.NO_SPAN
    with tracing.span("lcore.anything") as current:
        current.set_attribute("ignored", True)
    assert tracing.outgoing_headers() == {}


def test_tracing_off_never_imports_opentelemetry(write_config):
    """The extra may be installed yet unused: an app with tracing off never loads the SDK."""
    path = write_config()
    code = (
        "import json, sys\n"
        "from lcore_core.app import create_app\n"
        "from lcore_core.plugins import load_plugins\n"
        "from lcore_core import tracing\n"
        "create_app(sys.argv[1], plugins=load_plugins(entrypoints=False))\n"
        "with tracing.span('lcore.test'):\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=120, check=True)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))]
