"""Hook implementations of lcore-auth-k8s: the `k8s` module and the `kubernetes` MCP header."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from lcore_auth_k8s.auth import K8sAuth
from lcore_auth_k8s.cluster import SA_TOKEN, resolve_cluster
from lcore_core import AuthProvider, AuthTuple, hookimpl

if TYPE_CHECKING:
    from lcore_core import Config, Runtime

MODULE = "k8s"
KUBERNETES = "kubernetes"


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


@hookimpl
def lcore_auth_providers() -> list[AuthProvider]:
    return [AuthProvider(MODULE, _factory, config_key="k8s_config", schema=K8sConfigSchema,
                         description="Kubernetes TokenReview + SubjectAccessReview")]


@hookimpl
def lcore_mcp_header_value(spec: str, auth: AuthTuple) -> str | None:
    # As upstream: the caller's own (reviewed) Kubernetes token, sent as a Bearer credential.
    if spec.strip() != KUBERNETES:
        return None
    return f"Bearer {auth.token}" if auth.token else None


@hookimpl
async def lcore_shutdown(runtime: Runtime) -> None:
    if isinstance(runtime.authenticator, K8sAuth):
        await runtime.authenticator.close()
