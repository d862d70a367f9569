"""Loading and validating lightspeed-stack.yaml against the core's and the plugins' schemas."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, ValidationError, fields

from lcore_core.config import schema as core
from lcore_core.config.loader import Document, KeyPath, dotted, flatten_errors, read_document
from lcore_core.errors import ConfigError

if TYPE_CHECKING:
    from lcore_core.plugins import Plugins

__all__ = ["DEFAULT_CONFIG", "Config", "ConfigError", "Settings", "load_config"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "data" / "lightspeed-stack.yaml"

SECRET_KEYS = ("password", "api_key", "token", "secret", "client_secret", "tls_key_password")

# Keys of upstream's authentication section that a provider owns; accepted (and left unchecked)
# when that provider is not the selected module, so an upstream file loads unchanged.
UPSTREAM_AUTH_SUBSECTIONS = ("jwk_config", "api_key_config", "rh_identity_config",
                             "trusted_proxy_config")


class Settings(dict[str, Any]):
    """A validated mapping with attribute access (`config.service.port`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def wrap(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return cls({k: cls.wrap(v) for k, v in value.items()})
        if isinstance(value, list):
            return [cls.wrap(v) for v in value]
        return value


class Config(Settings):
    """The whole configuration; `source` is the file it came from."""

    source: str = "<defaults>"
    valid_actions: frozenset[str] = frozenset()

    def masked(self) -> dict[str, Any]:
        """A plain copy with every secret replaced by `*****`."""
        return _mask(copy.deepcopy(dict(self)))


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, key) for v in value]
    if value and isinstance(value, str) and any(s in key.lower() for s in SECRET_KEYS):
        return "*****"
    if key == "authorization_headers" and isinstance(value, dict):
        return {k: "*****" for k in value}
    return value


def load_config(path: str | Path | None, plugins: Plugins, *, text: str | None = None) -> Config:
    """Read, substitute and validate a configuration file; raise `ConfigError` on any problem."""
    doc = read_document(path or DEFAULT_CONFIG, text=text)
    return validate_document(doc, plugins)


def validate_document(doc: Document, plugins: Plugins) -> Config:
    from lcore_core.auth import Action

    data: dict[str, Any] = doc.data
    sections = plugins.config_sections()
    errors: list[ConfigError] = []

    schema_fields = dict(core.CORE_SECTIONS)
    for name, owned in sections.items():
        schema_fields[name] = fields.Nested(owned.schema, load_default=None, allow_none=True)
    for key in data:
        if key in schema_fields or key in ("authentication", "conversation_cache"):
            continue
        if key in core.PLUGIN_SECTIONS:
            dist = core.PLUGIN_SECTIONS[key]
            errors.append(doc.error((key,), f"section needs the plugin {dist}, which is not "
                                            f"installed (pip install {dist})"))
        elif key in core.UNSUPPORTED_SECTIONS:
            errors.append(doc.error((key,), f"not supported by LCore: "
                                            f"{core.UNSUPPORTED_SECTIONS[key]}; remove the key"))
        else:
            known = ", ".join(sorted([*schema_fields, "authentication", "conversation_cache"]))
            errors.append(doc.error((key,), f"unknown section; known sections: {known}"))

    main = Schema.from_dict(schema_fields, name="LightspeedStackConfig")()
    body = {k: v for k, v in data.items() if k in schema_fields}
    loaded: dict[str, Any] = {}
    try:
        loaded = main.load(body)
    except ValidationError as exc:
        errors.extend(_errors(doc, (), exc.messages))
        loaded = exc.valid_data if isinstance(exc.valid_data, dict) else {}

    loaded["authentication"] = _authentication(doc, data.get("authentication"), plugins, errors)
    loaded["conversation_cache"] = _cache(doc, data.get("conversation_cache"), plugins, errors)

    valid_actions = frozenset(a.value for a in Action) | plugins.actions()
    authz = loaded.get("authorization")
    if authz:
        authz["access_rules"] = list(authz["access_rules"]) + _rules_file(doc, authz, errors)
        for i, rule in enumerate(authz["access_rules"]):
            for j, action in enumerate(rule["actions"]):
                if action not in valid_actions:
                    errors.append(doc.error(
                        ("authorization", "access_rules", i, "actions", j),
                        f"unknown action {action!r}; valid actions: "
                        f"{', '.join(sorted(valid_actions))}"))

    if errors:
        raise ConfigErrors(errors)
    config = Config(Settings.wrap(loaded))
    config.source = doc.file
    config.valid_actions = valid_actions
    return config


class ConfigErrors(ConfigError):
    """Several configuration problems, one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.line or 0, e.key or ""))
        first = self.errors[0]
        super().__init__(first.message, file=first.file, line=first.line, key=first.key)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(e) for e in self.errors)


def _errors(doc: Document, base: KeyPath, messages: Any) -> list[ConfigError]:
    out = []
    for path, message in flatten_errors(messages, base):
        if message == "Unknown field.":
            message = "unknown key"
        elif message == "Missing data for required field.":
            message = "required key is missing"
        out.append(doc.error(path, message))
    return out


def _authentication(doc: Document, raw: Any, plugins: Plugins,
                    errors: list[ConfigError]) -> Settings:
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        errors.append(doc.error(("authentication",), "must be a mapping"))
        raw = {}
    providers = plugins.auth_providers()
    common = {
        "module": fields.String(load_default="noop"),
        "skip_tls_verification": fields.Boolean(load_default=False),
        "skip_for_health_probes": fields.Boolean(load_default=False),
        "skip_for_metrics": fields.Boolean(load_default=False),
        "k8s_cluster_api": fields.String(load_default=None, allow_none=True),
        "k8s_ca_cert_path": fields.String(load_default=None, allow_none=True),
    }
    module = raw.get("module", "noop")
    provider = providers.get(module)
    sub_keys = {p.config_key for p in providers.values() if p.config_key}
    sub_keys.update(UPSTREAM_AUTH_SUBSECTIONS)
    for key in sub_keys:
        common[key] = fields.Raw(load_default=None, allow_none=True)
    try:
        loaded = Schema.from_dict(common, name="Authentication")().load(raw)
    except ValidationError as exc:
        errors.extend(_errors(doc, ("authentication",), exc.messages))
        return Settings(module=module, settings=None)
    if provider is None:
        installed = ", ".join(sorted(providers)) or "none"
        errors.append(doc.error(("authentication", "module"),
                                f"unknown authentication module {module!r}; installed: "
                                f"{installed} (is the plugin that provides it installed?)"))
        return Settings.wrap(loaded)
    loaded["settings"] = _provider_settings(doc, ("authentication",), loaded, provider, errors)
    return Settings.wrap(loaded)


def _cache(doc: Document, raw: Any, plugins: Plugins, errors: list[ConfigError]) -> Settings:
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        errors.append(doc.error(("conversation_cache",), "must be a mapping"))
        raw = {}
    backends = plugins.cache_backends()
    kind = raw.get("type", "memory" if raw else "noop")
    allowed = {"type"} | {b.key for b in backends.values()} | {"memory", "sqlite", "postgres"}
    for key in raw:
        if key not in allowed:
            errors.append(doc.error(("conversation_cache", key), "unknown key"))
    backend = backends.get(kind)
    if backend is None:
        installed = ", ".join(sorted(backends))
        errors.append(doc.error(("conversation_cache", "type"),
                                f"unknown conversation cache type {kind!r}; installed: "
                                f"{installed} (is the plugin that provides it installed?)"))
        return Settings(type=kind, settings=None)
    loaded = {"type": kind}
    loaded["settings"] = _provider_settings(doc, ("conversation_cache",), raw, backend, errors)
    return Settings.wrap(loaded)


def _provider_settings(doc: Document, base: KeyPath, raw: dict[str, Any], provider: Any,
                       errors: list[ConfigError]) -> Any:
    key = getattr(provider, "key", None) or provider.config_key
    value = raw.get(key) if key else None
    if provider.schema is None:
        return value
    if value is None:
        if provider.required:
            errors.append(doc.error((*base, key), f"section {key} is required when "
                                                  f"{dotted(base)} selects {provider.name!r}"))
            return None
        value = {}
    try:
        return provider.schema().load(value)
    except ValidationError as exc:
        errors.extend(_errors(doc, (*base, key), exc.messages))
        return None


def _rules_file(doc: Document, authz: dict[str, Any], errors: list[ConfigError]) -> list[Any]:
    path = authz.get("rules_file")
    if not path:
        return []
    base = Path(doc.file).parent if doc.file else Path.cwd()
    file = (base / path) if not Path(path).is_absolute() else Path(path)
    try:
        rules_doc = read_document(file)
    except ConfigError as exc:
        errors.append(exc)
        return []
    rules = rules_doc.data.get("access_rules", [])
    try:
        return core.AccessRuleSchema(many=True).load(rules)
    except ValidationError as exc:
        errors.extend(_errors(rules_doc, ("access_rules",), exc.messages))
        return []
