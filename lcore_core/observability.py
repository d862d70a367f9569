"""Upstream's way of switching tracing on: OpenTelemetry's own `OTEL_*` variables.

Upstream starts under `opentelemetry-instrument` and traces when `OTEL_SDK_DISABLED=false`; its
`observability.otel` section is those variables as the process saw them, shown by /v1/config
with secrets redacted. LCore reads the same variables itself (no wrapper needed): from the
process environment, or from `observability.otel` in the configuration file, the environment
winning. They turn into the same tracer as an explicit `service.tracing` section, which, when
enabled, takes precedence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

PREFIX = "OTEL_"
NAME = re.compile(r"^OTEL_[A-Z0-9_]{1,120}$")
MAX_VARIABLES = 64
REDACTED = "[REDACTED]"

# The ones LCore acts on; a configuration file may give only these.
SDK_DISABLED = "OTEL_SDK_DISABLED"
SERVICE_NAME = "OTEL_SERVICE_NAME"
EXPORTER = "OTEL_TRACES_EXPORTER"
SAMPLER = "OTEL_TRACES_SAMPLER"
SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"
PROPAGATORS = "OTEL_PROPAGATORS"
# Exporter settings: the traces-specific variable first, then the generic one.
EXPORTER_SETTINGS = ("ENDPOINT", "PROTOCOL", "HEADERS", "CERTIFICATE", "CLIENT_KEY",
                     "CLIENT_CERTIFICATE")
SUPPORTED = frozenset({SDK_DISABLED, SERVICE_NAME, EXPORTER, SAMPLER, SAMPLER_ARG, PROPAGATORS,
                       *(f"OTEL_EXPORTER_OTLP_{s}" for s in EXPORTER_SETTINGS),
                       *(f"OTEL_EXPORTER_OTLP_TRACES_{s}" for s in EXPORTER_SETTINGS)})

# OTEL_TRACES_SAMPLER values: (follow the caller's decision, ratio of new traces kept or None
# for OTEL_TRACES_SAMPLER_ARG).
SAMPLERS: dict[str, tuple[bool, float | None]] = {
    "always_on": (False, 1.0), "always_off": (False, 0.0), "traceidratio": (False, None),
    "parentbased_always_on": (True, 1.0), "parentbased_always_off": (True, 0.0),
    "parentbased_traceidratio": (True, None),
}
PROTOCOLS = ("http/protobuf",)
KNOWN_PROPAGATORS = ("tracecontext", "baggage", "none")


def effective(configured: Mapping[str, str] | None,
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `OTEL_*` settings in force: the file's `observability.otel`, overridden by the
    environment (as OpenTelemetry itself would read it)."""
    environ = os.environ if environ is None else environ
    merged = dict(configured or {})
    merged.update((k, v) for k, v in environ.items() if k.startswith(PREFIX))
    return merged


def _exporter(otel: Mapping[str, str], setting: str) -> tuple[str, str] | None:
    for name in (f"OTEL_EXPORTER_OTLP_TRACES_{setting}", f"OTEL_EXPORTER_OTLP_{setting}"):
        if otel.get(name):
            return name, otel[name]
    return None


def problems(otel: Mapping[str, str], from_file: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable, message) for each setting LCore cannot honour; empty when tracing stays off.

    A variable only the environment sets is checked only when it matters (tracing on): other
    `OTEL_*` variables there may belong to other programs.
    """
    found = [(name, f"LCore does not act on {name}; the variables it reads are "
                    f"{', '.join(sorted(SUPPORTED))}")
             for name in from_file if name not in SUPPORTED]
    disabled = otel.get(SDK_DISABLED, "true").strip().lower()
    if disabled not in ("true", "false"):
        found.append((SDK_DISABLED, f"must be true or false, not {disabled!r}"))
    if disabled != "false":
        return found
    exporter = otel.get(EXPORTER, "otlp").strip().lower()
    if exporter not in ("otlp", "none"):
        found.append((EXPORTER, f"LCore exports spans over OTLP only: otlp or none, "
                                f"not {exporter!r}"))
    protocol = _exporter(otel, "PROTOCOL")
    if protocol and protocol[1].strip().lower() not in PROTOCOLS:
        found.append((protocol[0], f"LCore sends OTLP over HTTP with protobuf: "
                                   f"{', '.join(PROTOCOLS)}, not {protocol[1]!r}"))
    sampler = otel.get(SAMPLER, "parentbased_always_on").strip().lower()
    if sampler not in SAMPLERS:
        found.append((SAMPLER, f"one of {', '.join(SAMPLERS)}, not {sampler!r}"))
    elif SAMPLERS[sampler][1] is None:
        try:
            ratio = float(otel.get(SAMPLER_ARG, "1.0"))
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            found.append((SAMPLER_ARG, "must be a number from 0 to 1"))
    propagators = [p.strip().lower() for p in otel.get(PROPAGATORS, "").split(",") if p.strip()]
    unknown = [p for p in propagators if p not in KNOWN_PROPAGATORS]
    if unknown:
        found.append((PROPAGATORS, f"LCore knows {', '.join(KNOWN_PROPAGATORS)}; not "
                                   f"{', '.join(unknown)}"))
    return found


def _headers(value: str) -> dict[str, str]:
    """`k1=v1,k2=v2` (values URL-encoded) as OpenTelemetry's OTEL_EXPORTER_OTLP_HEADERS."""
    pairs = (part.partition("=") for part in value.split(","))
    return {unquote(k).strip().lower(): unquote(v).strip() for k, sep, v in pairs if sep and k}


def tracing_settings(otel: Mapping[str, str]) -> dict[str, Any] | None:
    """A `service.tracing`-like mapping for tracing switched on by `OTEL_*` (`problems` already
    passed), or None when they leave it off."""
    if otel.get(SDK_DISABLED, "true").strip().lower() != "false":
        return None
    if otel.get(EXPORTER, "otlp").strip().lower() == "none":
        return None
    endpoint = otel.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = otel.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    parent_based, ratio = SAMPLERS[otel.get(SAMPLER, "parentbased_always_on").strip().lower()]
    files = {s: _exporter(otel, s) for s in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE")}
    headers = _exporter(otel, "HEADERS")
    propagators = {p.strip().lower() for p in otel.get(PROPAGATORS, "tracecontext").split(",")}
    return {
        "enabled": True,
        # The traces variable is the full URL; the generic one a base that gets /v1/traces.
        "traces_url": endpoint or None,
        "endpoint": None if endpoint else base,
        "service_name": otel.get(SERVICE_NAME) or "lcore",
        "sample_ratio": float(otel.get(SAMPLER_ARG, "1.0")) if ratio is None else ratio,
        "parent_based": parent_based,
        "headers": _headers(headers[1]) if headers else None,
        "certificate_file": files["CERTIFICATE"] and files["CERTIFICATE"][1],
        "client_key_file": files["CLIENT_KEY"] and files["CLIENT_KEY"][1],
        "client_certificate_file": files["CLIENT_CERTIFICATE"] and files["CLIENT_CERTIFICATE"][1],
        "extract": propagators != {"none"},
    }


def redacted(otel: Mapping[str, str]) -> dict[str, str]:
    """What /v1/config shows, as upstream redacts it: header values (names kept), certificates
    and client keys."""
    shown = {}
    for name, value in otel.items():
        if "OTLP" in name and "HEADERS" in name:
            shown[name] = ",".join(
                f"{k.strip()}={REDACTED}" if sep else REDACTED
                for k, sep, _ in (p.partition("=") for p in value.split(","))) \
                if "=" in value else REDACTED
        elif "OTLP" in name and ("CERTIFICATE" in name or "CLIENT_KEY" in name):
            shown[name] = REDACTED
        else:
            shown[name] = value
    return shown
