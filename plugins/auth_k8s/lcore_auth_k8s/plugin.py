"""Hook implementations of lcore-auth-k8s: the `k8s` and `trusted-proxy` modules."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from lcore_auth_k8s.api import KubeApi, ReviewCache
from lcore_auth_k8s.auth import K8sAuth
from lcore_auth_k8s.cluster import SA_TOKEN, resolve_cluster
from lcore_auth_k8s.trusted_proxy import TrustedProxyAuth, TrustedProxySchema
from lcore_core import AuthProvider, ConfigError, hookimpl

if TYPE_CHECKING:
    from lcore_core import Config, Runtime

MODULE = "k8s"
TRUSTED_PROXY = "trusted-proxy"


def _existing(value: str) -> None:
    if not Path(value).expanduser().is_file():
        raise ValidationError(f"file {value!r} does not exist")


class K8sConfigSchema(Schema):
    """`authentication.k8s_config` (LCore addition; upstream's k8s_* keys stay where they are)."""

    class Meta:
        unknown = RAISE

    cache_ttl_seconds = fields.Integer(load_default=30, validate=validate.Range(min=0))
    cache_max_entries = fields.Integer(load_default=10000, validate=validate.Range(min=1))
    sar_path = fields.String(load_default="/ls-access", validate=validate.Regexp(
        r"^/", error="must start with '/'"))
    sar_verb = fields.String(load_default="get", validate=validate.Length(min=1))
    group_roles = fields.Dict(keys=fields.String(), values=fields.List(fields.String()),
                              load_default=dict)
    groups_as_roles = fields.Boolean(load_default=True)
    service_account_token_path = fields.String(load_default=str(SA_TOKEN))
    kubeconfig = fields.String(load_default=None, allow_none=True, validate=_existing)
    timeout_seconds = fields.Float(load_default=5.0, validate=validate.Range(
        min=0, min_inclusive=False))
    cluster_id = fields.String(load_default=None, allow_none=True)


def _factory(settings: dict[str, Any], config: Config) -> K8sAuth:
    return K8sAuth(resolve_cluster(config.authentication, settings), settings)


def _proxy_factory(settings: dict[str, Any], config: Config) -> TrustedProxyAuth:
    # The API server is reached as for `k8s`: upstream's k8s_* keys, and LCore's k8s_config
    # (kubeconfig, token path, timeout, cache), which belongs to the `k8s` module's schema.
    try:
        k8s = K8sConfigSchema().load(config.authentication.get("k8s_config") or {})
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"": exc.messages}
        field, problem = next(iter(messages.items()))
        raise ConfigError(" ".join(map(str, problem)) if isinstance(problem, list)
                          else str(problem), file=config.source,
                          key=f"authentication.k8s_config.{field}".rstrip(".")) from None
    api = KubeApi(resolve_cluster(config.authentication, k8s), k8s["timeout_seconds"])
    return TrustedProxyAuth(api, settings, ReviewCache(k8s["cache_ttl_seconds"],
                                                       k8s["cache_max_entries"]))


@hookimpl
def lcore_auth_providers() -> list[AuthProvider]:
    return [
        # As upstream, access rules do not judge `k8s` callers (its SubjectAccessReview does).
        AuthProvider(MODULE, _factory, config_key="k8s_config", schema=K8sConfigSchema,
                     access_rules=False,
                     description="Kubernetes TokenReview + SubjectAccessReview"),
        AuthProvider(TRUSTED_PROXY, _proxy_factory, config_key="trusted_proxy_config",
                     schema=TrustedProxySchema, required=True,
                     description="a user header set by a proxy whose service-account token "
                                 "passes a TokenReview"),
    ]


@hookimpl
async def lcore_shutdown(runtime: Runtime) -> None:
    if isinstance(runtime.authenticator, K8sAuth | TrustedProxyAuth):
        await runtime.authenticator.close()
