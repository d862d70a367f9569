"""Loading and validating lightspeed-stack.yaml against the core's and the plugins' schemas."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from marshmallow import Schema, ValidationError, fields, missing

from lcore_core.config import schema as core
from lcore_core.config import unified
from lcore_core.config.loader import Document, KeyPath, dotted, flatten_errors, read_document
from lcore_core.errors import ConfigError
from lcore_core.rlsapi import config as rlsapi_config

if TYPE_CHECKING:
    from lcore_core.plugins import Plugins

__all__ = ["DEFAULT_CONFIG", "Config", "ConfigError", "ConfigErrors", "Settings", "load_config"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "data" / "lightspeed-stack.yaml"

SECRET_KEYS = ("password", "api_key", "token", "secret", "client_secret", "tls_key_password")
# Mappings whose every value is secret, whatever the key (header name -> credential).
SECRET_MAPPINGS = ("authorization_headers",)
MASK = "*****"

# Keys of upstream's authentication section that a provider owns; accepted (and left unchecked)
# when that provider is not the selected module, so an upstream file loads unchanged.
UPSTREAM_AUTH_SUBSECTIONS = ("jwk_config", "api_key_config", "rh_identity_config",
                             "trusted_proxy_config")

# Sections the validator handles itself (their schema depends on the selected provider).
PROVIDER_SECTIONS = ("authentication", "conversation_cache")


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
    # file:line: key: message lines about what was accepted with a caveat.
    warnings: tuple[str, ...] = ()

    def masked(self) -> dict[str, Any]:
        """A plain copy with every secret replaced by `*****`."""
        from lcore_core import observability

        shown = mask(copy.deepcopy(dict(self)))
        otel = (self.get("observability") or {}).get("otel")
        if otel:
            shown["observability"]["otel"] = observability.redacted(otel)
        return shown


def mask(value: Any, key: str = "") -> Any:
    """`value` with every secret replaced by `*****`: values under secret-sounding keys, the
    values of `SECRET_MAPPINGS`, and credentials inside URLs."""
    if key in SECRET_MAPPINGS and isinstance(value, dict):
        return {k: MASK if v else v for k, v in value.items()}
    if isinstance(value, dict):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    if value and isinstance(value, str) and any(s in key.lower() for s in SECRET_KEYS):
        return MASK
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


_SECRET_PARAMS = (*SECRET_KEYS, "key", "sig", "auth", "credential")


def mask_url(url: str) -> str:
    """A URL without its secrets: the password of `user:password@` and the values of query
    parameters named like secrets (`?api_key=`, `?token=`, `?sig=`...)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = "&".join(
        f"{name}={MASK}" if value and any(s in name.lower() for s in _SECRET_PARAMS)
        else f"{name}={value}" if sep else name
        for name, sep, value in (p.partition("=") for p in parts.query.split("&") if p))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class ConfigErrors(ConfigError):
    """Several configuration problems, one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.file or "", e.line or 0, e.key or ""))
        first = self.errors[0]
        super().__init__(first.message, file=first.file, line=first.line, key=first.key)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(e) for e in self.errors)


class _Report:
    """Collects errors about one document; `rename` maps canonical section names back to the
    name the file used (an upstream alias such as `ogx`)."""

    def __init__(self, doc: Document, errors: list[ConfigError],
                 rename: dict[str, str] | None = None,
                 warnings: list[str] | None = None) -> None:
        self.doc = doc
        self.errors = errors
        self.rename = rename or {}
        # Accepted, but worth telling the operator (file:line: key: message lines).
        self.warnings = warnings if warnings is not None else []

    def _shown(self, path: KeyPath) -> KeyPath:
        if path and path[0] in self.rename:
            return (self.rename[str(path[0])], *path[1:])
        return path

    def add(self, path: KeyPath, message: str, *, at: KeyPath | None = None) -> None:
        self.errors.append(self.doc.error(
            self._shown(path), message, at=None if at is None else self._shown(at)))

    def warn(self, path: KeyPath, message: str) -> None:
        self.warnings.append(str(self.doc.error(self._shown(path), message)))

    def invalid(self, base: KeyPath, messages: Any) -> None:
        """marshmallow's error messages, each at its key's line."""
        for path, message in flatten_errors(messages, base):
            if message == "Unknown field.":
                message = "unknown key"
            elif message == "Missing data for required field.":
                message = "required key is missing"
            elif message == "Field may not be null.":
                message = "must not be null"
            self.add(path, message)


def load_config(path: str | Path | None, plugins: Plugins, *, text: str | None = None) -> Config:
    """Read, substitute and validate a configuration file; raise `ConfigError` on any problem."""
    doc = read_document(path or DEFAULT_CONFIG, text=text)
    return validate_document(doc, plugins)


def validate_document(doc: Document, plugins: Plugins) -> Config:
    from lcore_core.auth import Action

    errors: list[ConfigError] = []
    data: dict[str, Any] = dict(doc.data)
    rename: dict[str, str] = {}
    for alias, canonical in core.SECTION_ALIASES.items():
        if alias not in data:
            continue
        if canonical in data:
            errors.append(doc.error((alias,), f"give either {canonical} or {alias}, not both"))
            del data[alias]
            continue
        data[canonical] = data.pop(alias)
        rename[canonical] = alias
    report = _Report(doc, errors, rename)
    _refuse_unsupported_keys(data, report)
    _beside_the_file(doc, data.get("llama_stack"), "library_client_config_path")

    schema_fields = dict(core.CORE_SECTIONS)
    for name, owned in plugins.config_sections().items():
        schema_fields[name] = fields.Nested(owned.schema, load_default=None, allow_none=True)
    known = [*schema_fields, *PROVIDER_SECTIONS, *core.SECTION_ALIASES]
    for key in data:
        if key in schema_fields or key in PROVIDER_SECTIONS:
            continue
        if key in core.PLUGIN_SECTIONS:
            dist = core.PLUGIN_SECTIONS[key]
            report.add((key,), f"section needs the plugin {dist}, which is not installed "
                               f"(pip install {dist})")
        elif key in core.UNSUPPORTED_SECTIONS:
            report.add((key,), f"not supported by LCore: {core.UNSUPPORTED_SECTIONS[key]}; "
                               f"remove the section")
        else:
            report.add((key,), f"unknown section{_did_you_mean(key, known)}; known sections: "
                               f"{', '.join(sorted(known))}")

    rag = data.get("rag")
    if data.get("byok_rag") and isinstance(rag, dict) and "byok" in rag:
        report.add(("byok_rag",), "give the stores either as byok_rag (0.6 layout) or as "
                                  "rag.byok.stores (0.7 layout), not both")
    main = Schema.from_dict(schema_fields, name="LightspeedStackConfig")()
    # A section written with nothing under it (`rlsapi_v1:` with its keys commented out) is
    # that section's defaults, where the section has defaults.
    body = {k: v for k, v in data.items() if k in schema_fields
            and not (v is None and schema_fields[k].load_default is not missing)}
    loaded: dict[str, Any] = {}
    try:
        loaded = main.load(body)
    except ValidationError as exc:
        report.invalid((), exc.messages)
        loaded = exc.valid_data if isinstance(exc.valid_data, dict) else {}

    core.normalise_rag(loaded)

    base_dir = Path(doc.file).resolve().parent if doc.file and not doc.file.startswith("<") \
        else None
    for path, message in unified.check_modes(loaded, base_dir):
        report.add(path, message)

    loaded["authentication"] = _authentication(report, data.get("authentication"), plugins)
    loaded["conversation_cache"] = _cache(report, data.get("conversation_cache"), plugins)

    _check_kubernetes_headers(report, loaded)
    _observability(report, loaded)
    for path, message in rlsapi_config.cross_section_errors(loaded):
        report.add(path, message)
    valid_actions = frozenset(a.value for a in Action) | plugins.actions()
    authz = loaded.get("authorization")
    if authz:
        _check_actions(report, ("authorization", "access_rules"), authz["access_rules"],
                       valid_actions)
        authz["access_rules"] = [*authz["access_rules"],
                                 *_rules_file(report, authz, valid_actions)]

    if errors:
        raise ConfigErrors(errors)
    config = Config(Settings.wrap(loaded))
    config.source = doc.file
    config.valid_actions = valid_actions
    config.warnings = tuple(report.warnings)
    return config


def _beside_the_file(doc: Document, section: Any, key: str) -> None:
    """A relative path that does not exist from the working directory but does beside the
    configuration file is taken from beside the file (so the embedded default finds its run.yaml).
    """
    if not isinstance(section, dict) or not isinstance(section.get(key), str):
        return
    path = Path(section[key]).expanduser()
    if path.is_absolute() or path.exists() or not doc.file or doc.file.startswith("<"):
        return
    beside = Path(doc.file).resolve().parent / path
    if beside.exists():
        section[key] = str(beside.resolve())


def _observability(report: _Report, loaded: dict[str, Any]) -> None:
    """Merge the environment's OTEL_* into `observability.otel` and check what LCore honours."""
    from lcore_core import observability, tracing

    section = loaded.get("observability") or {}
    from_file = dict(section.get("otel") or {})
    otel = observability.effective(from_file)
    for name, message in observability.problems(otel, from_file):
        where = "" if name in from_file and from_file[name] == otel.get(name) \
            else f"(environment variable {name}) "
        report.add(("observability", "otel", name) if name in from_file else ("observability",),
                   where + message)
    if observability.tracing_settings(otel) is not None and not tracing.installed():
        report.add(("observability", "otel"),
                   f"{observability.SDK_DISABLED}=false asks for tracing: {tracing.NOT_INSTALLED}")
    loaded["observability"] = {"otel": otel}


def _check_kubernetes_headers(report: _Report, loaded: dict[str, Any]) -> None:
    """`kubernetes` MCP header values forward the caller's bearer token, which only the `k8s`
    and `noop-with-token` modules keep. As upstream, a server that needs it under another
    module is left out, with a warning (config check, start-up log) naming the key."""
    from lcore_core.mcp import KUBERNETES, KUBERNETES_MODULES

    module = (loaded.get("authentication") or {}).get("module")
    kept = []
    for i, server in enumerate(loaded.get("mcp_servers") or ()):
        needs = [h for h, spec in (server.get("authorization_headers") or {}).items()
                 if str(spec).strip() == KUBERNETES]
        if needs and module not in KUBERNETES_MODULES:
            report.warn(("mcp_servers", i, "authorization_headers", needs[0]),
                        f"'kubernetes' forwards the caller's bearer token, which "
                        f"authentication.module {module!r} does not have (k8s or "
                        f"noop-with-token do): MCP server {server.get('name')!r} is left "
                        f"out, as upstream does")
            continue
        kept.append(server)
    if "mcp_servers" in loaded:
        loaded["mcp_servers"] = kept


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _matches(node: Any, pattern: tuple[str, ...], path: KeyPath = ()) -> Iterator[KeyPath]:
    """Key paths in `node` matching `pattern` ("*" matches every list item)."""
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        items: list[tuple[str | int, Any]] = (list(enumerate(node)) if isinstance(node, list)
                                              else [])
    elif isinstance(node, dict) and head in node:
        items = [(head, node[head])]
    else:
        items = []
    for key, child in items:
        if rest:
            yield from _matches(child, rest, (*path, key))
        else:
            yield (*path, key)


def _refuse_unsupported_keys(data: dict[str, Any], report: _Report) -> None:
    """Report and drop upstream keys LCore does not support, so they are not "unknown"."""
    for pattern, what in core.UNSUPPORTED_KEYS.items():
        for path in list(_matches(data, pattern)):
            report.add(path, f"not supported by LCore: {what}; remove the key")
            parent: Any = data
            for part in path[:-1]:
                parent = parent[part]
            del parent[path[-1]]


def _provider_hint(kind: str, name: Any, known: dict[str, str | None],
                   installed: dict[str, Any]) -> str:
    names = ", ".join(sorted(installed)) or "none"
    if name in known and known[name] is None:
        return (f"{kind} {name!r} exists upstream but is not supported by LCore; "
                f"installed: {names}")
    if name in known:
        dist = known[name]
        return (f"{kind} {name!r} is provided by the plugin {dist}, which is not installed "
                f"(pip install {dist}); installed: {names}")
    return f"unknown {kind} {name!r}; installed: {names} (is the plugin that provides it " \
           f"installed?)"


def _authentication(report: _Report, raw: Any, plugins: Plugins) -> Settings:
    base: KeyPath = ("authentication",)
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        report.add(base, "must be a mapping")
        raw = {}
    providers = plugins.auth_providers()
    common: dict[str, fields.Field] = {
        "module": fields.String(load_default="noop"),
        "skip_tls_verification": fields.Boolean(load_default=False),
        "skip_for_health_probes": fields.Boolean(load_default=False),
        "skip_for_metrics": fields.Boolean(load_default=False),
        "k8s_cluster_api": fields.String(load_default=None, allow_none=True,
                                         validate=core.HTTP_URL),
        "k8s_ca_cert_path": fields.String(load_default=None, allow_none=True,
                                          validate=core.existing_file),
    }
    sub_keys = {p.config_key for p in providers.values() if p.config_key}
    sub_keys.update(UPSTREAM_AUTH_SUBSECTIONS)
    for key in sub_keys:
        common[key] = fields.Raw(load_default=None, allow_none=True)
    try:
        loaded = Schema.from_dict(common, name="Authentication")().load(raw)
    except ValidationError as exc:
        report.invalid(base, exc.messages)
        return Settings(module=raw.get("module", "noop"), settings=None)
    module = loaded["module"]
    provider = providers.get(module)
    if provider is None:
        report.add((*base, "module"), _provider_hint("authentication module", module,
                                                     core.KNOWN_AUTH_MODULES, providers))
        return Settings.wrap(loaded)
    loaded["settings"] = _provider_settings(report, base, loaded, provider)
    return Settings.wrap(loaded)


def _cache(report: _Report, raw: Any, plugins: Plugins) -> Settings:
    base: KeyPath = ("conversation_cache",)
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        report.add(base, "must be a mapping")
        raw = {}
    backends = plugins.cache_backends()
    backend_keys = {b.key for b in backends.values()} | {"memory", "sqlite", "postgres"}
    for key in raw:
        if key != "type" and key not in backend_keys:
            report.add((*base, key), f"unknown key{_did_you_mean(key, sorted(backend_keys))}")
    kind = raw.get("type")
    if kind is None:
        given = [k for k in raw if k in backend_keys]
        if given:
            report.add((*base, "type"), f"type is required when a backend section is given "
                                        f"(found {given[0]})", at=(*base, given[0]))
        # As upstream: no type means no conversation cache.
        return Settings(type="noop", settings=None)
    if not isinstance(kind, str):
        report.add((*base, "type"), "must be a string")
        return Settings(type=str(kind), settings=None)
    backend = backends.get(kind)
    if backend is None:
        report.add((*base, "type"), _provider_hint("conversation cache type", kind,
                                                   core.KNOWN_CACHE_TYPES, backends))
        return Settings(type=kind, settings=None)
    for key in raw:
        if key in backend_keys and key != backend.key:
            report.add((*base, key), f"only the {backend.key} section may be given when "
                                     f"type is {kind!r}")
    loaded = {"type": kind, "settings": _provider_settings(report, base, raw, backend)}
    return Settings.wrap(loaded)


def _provider_settings(report: _Report, base: KeyPath, raw: dict[str, Any],
                       provider: Any) -> Any:
    key = getattr(provider, "key", None) or provider.config_key
    value = raw.get(key) if key else None
    if provider.schema is None:
        return value
    selector = "module" if base == ("authentication",) else "type"
    if value is None:
        if provider.required:
            report.add((*base, key), f"section {key} is required when {dotted(base)}."
                                     f"{selector} is {provider.name!r}", at=(*base, selector))
            return None
        value = {}
    try:
        return provider.schema().load(value)
    except ValidationError as exc:
        report.invalid((*base, key), exc.messages)
        return None


def _check_actions(report: _Report, base: KeyPath, rules: list[dict[str, Any]],
                   valid: frozenset[str]) -> None:
    for i, rule in enumerate(rules):
        for j, action in enumerate(rule["actions"]):
            if action in valid:
                continue
            if action in core.PLUGIN_ACTIONS:
                dist = core.PLUGIN_ACTIONS[action]
                message = (f"action {action!r} needs the plugin {dist}, which is not "
                           f"installed (pip install {dist})")
            elif action in core.UPSTREAM_ACTIONS:
                # Upstream's action for an endpoint LCore does not serve yet: granting it
                # grants nothing, so the file still loads.
                report.warn((*base, i, "actions", j),
                            f"action {action!r} grants nothing in LCore: it is for "
                            f"{core.UPSTREAM_ACTIONS[action]}, which LCore does not serve")
                continue
            else:
                message = (f"unknown action {action!r}"
                           f"{_did_you_mean(action, sorted(valid))}; valid actions: "
                           f"{', '.join(sorted(valid))}")
            report.add((*base, i, "actions", j), message)


def _rules_file(report: _Report, authz: dict[str, Any],
                valid: frozenset[str]) -> list[dict[str, Any]]:
    """The access rules of `authorization.rules_file` (relative to the configuration file)."""
    path = authz.get("rules_file")
    if not path:
        return []
    key: KeyPath = ("authorization", "rules_file")
    doc = report.doc
    base = Path(doc.file).parent if doc.file and not doc.file.startswith("<") else Path.cwd()
    file = Path(path).expanduser()
    file = file if file.is_absolute() else base / file
    if not file.is_file():
        report.add(key, f"rules file {str(file)!r} does not exist")
        return []
    try:
        rules_doc = read_document(file)
    except ConfigError as exc:
        report.errors.append(exc)
        return []
    rules = _Report(rules_doc, report.errors, warnings=report.warnings)
    try:
        loaded = core.RulesFileSchema().load(rules_doc.data)
    except ValidationError as exc:
        rules.invalid((), exc.messages)
        return []
    _check_actions(rules, ("access_rules",), loaded["access_rules"], valid)
    return list(loaded["access_rules"])
