"""Authentication types, actions and the authorization decorator."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import structlog
from quart import current_app, g, request

from lcore_core import tracing
from lcore_core.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from quart import Request

    from lcore_core.config import Config
    from lcore_core.providers import AuthProvider

log = structlog.get_logger("lcore.auth")

DEFAULT_USER_ID = "00000000-0000-0000-0000-000"
FORBIDDEN_RESPONSE = "User does not have permission to access this endpoint"
DEFAULT_USERNAME = "lightspeed-user"


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_bearer(request: Request) -> str:
    """The Bearer token, or 401 with upstream's causes (no header / no token in it), which every
    token-reading auth module shares."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized(cause="No token found in Authorization header"
                           if request.headers.get("Authorization")
                           else "No Authorization header found")
    return token


class AuthTuple(NamedTuple):
    """Who made a request. `token` is the caller's own credential, forwarded as received."""

    user_id: str
    username: str
    roles: frozenset[str] = frozenset()
    token: str | None = None
    skip_user_id_check: bool = False


@runtime_checkable
class Authenticator(Protocol):
    """What an auth provider's factory returns."""

    async def authenticate(self, request: Request) -> AuthTuple:
        """Return the caller's identity or raise `Unauthorized` (401) / `Forbidden` (403)."""
        ...


class Action(StrEnum):
    """The core's authorization actions (names as in upstream's `authorization.access_rules`).

    Plugins add their own action names through `lcore_actions`.
    """

    ADMIN = "admin"
    LIST_OTHERS_CONVERSATIONS = "list_other_conversations"
    READ_OTHERS_CONVERSATIONS = "read_other_conversations"
    QUERY_OTHERS_CONVERSATIONS = "query_other_conversations"
    DELETE_OTHERS_CONVERSATIONS = "delete_other_conversations"
    QUERY = "query"
    STREAMING_QUERY = "streaming_query"
    GET_CONVERSATION = "get_conversation"
    LIST_CONVERSATIONS = "list_conversations"
    DELETE_CONVERSATION = "delete_conversation"
    UPDATE_CONVERSATION = "update_conversation"
    FEEDBACK = "feedback"
    GET_MODELS = "get_models"
    GET_TOOLS = "get_tools"
    GET_SKILLS = "get_skills"
    GET_SHIELDS = "get_shields"
    LIST_PROVIDERS = "list_providers"
    GET_PROVIDER = "get_provider"
    LIST_RAGS = "list_rags"
    GET_RAG = "get_rag"
    GET_METRICS = "get_metrics"
    GET_CONFIG = "get_config"
    INFO = "info"
    MODEL_OVERRIDE = "model_override"
    OVERRIDE_SHIELDS = "override_shields"
    RLSAPI_V1_INFER = "rlsapi_v1_infer"
    RESPONSES = "responses"
    MANAGE_VECTOR_STORES = "manage_vector_stores"
    READ_VECTOR_STORES = "read_vector_stores"
    MANAGE_FILES = "manage_files"
    MANAGE_PROMPTS = "manage_prompts"
    READ_PROMPTS = "read_prompts"
    MANAGE_SAVED_PROMPTS = "manage_saved_prompts"
    REGISTER_MCP_SERVER = "register_mcp_server"
    LIST_MCP_SERVERS = "list_mcp_servers"
    DELETE_MCP_SERVER = "delete_mcp_server"


class RbacResolver:
    """Roles to actions from `authorization.access_rules`.

    Role `*` applies to every caller; `admin` grants every action; a rule may list `inherits`
    (roles whose actions it also gets). With no rules at all (no section, or an empty list),
    every action is allowed, as upstream does.
    """

    def __init__(self, rules: list[dict[str, Any]] | None) -> None:
        self.enabled = bool(rules)
        self._direct: dict[str, set[str]] = {}
        self._parents: dict[str, set[str]] = {}
        for rule in rules or []:
            self._direct.setdefault(rule["role"], set()).update(str(a) for a in rule["actions"])
            self._parents.setdefault(rule["role"], set()).update(rule.get("inherits") or [])
        self._cache: dict[frozenset[str], frozenset[str]] = {}

    def actions_for(self, roles: frozenset[str]) -> frozenset[str]:
        found = self._cache.get(roles)
        if found is not None:
            return found
        granted: set[str] = set()
        seen: set[str] = set()
        pending = [*roles, "*"]
        while pending:
            role = pending.pop()
            if role in seen:
                continue
            seen.add(role)
            granted |= self._direct.get(role, set())
            pending.extend(self._parents.get(role, ()))
        found = frozenset(granted)
        self._cache[roles] = found
        return found

    def allowed(self, auth: AuthTuple, action: str) -> bool:
        if not self.enabled:
            return True
        actions = self.actions_for(auth.roles)
        return Action.ADMIN in actions or action in actions


def applied_access_rules(config: Config, provider: AuthProvider) -> list[dict[str, Any]] | None:
    """The access rules that judge callers of the selected module, or None when none do.

    As upstream, some modules leave every action allowed whatever the rules say (`noop`,
    `noop-with-token`, `api-key-token`, `k8s`, and `jwk-token` without role rules; see
    `AuthProvider.access_rules`); `authorization.always_apply_access_rules: true` applies them
    to every module instead.
    """
    authz = config.get("authorization") or {}
    rules = list(authz.get("access_rules") or [])
    if not rules:
        return None
    if authz.get("always_apply_access_rules") or provider.applies_access_rules(
            config.authentication.get("settings")):
        return rules
    return None


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


async def authenticate_request() -> AuthTuple:
    """Authenticate the current request once; the result is kept in `g.auth`."""
    auth: AuthTuple | None = getattr(g, "auth", None)
    if auth is None:
        auth = await current_app.runtime.authenticator.authenticate(request)  # type: ignore[attr-defined]
        g.auth = auth
    return auth


async def check_action(auth: AuthTuple, action: str) -> None:
    """Raise `Forbidden` unless `auth` may perform `action`."""
    runtime = current_app.runtime  # type: ignore[attr-defined]
    if not runtime.plugins.authorize(auth, action, request):
        # Upstream's texts; the action is in the log line (the body does not name it).
        log.info("action refused", user_id=auth.user_id, action=action)
        raise Forbidden(FORBIDDEN_RESPONSE,
                        f"User {auth.user_id} is not authorized to access this endpoint.")


def may(auth: AuthTuple, action: str) -> bool:
    """Whether `auth` may perform `action` (for `*_OTHERS_*` style checks inside handlers)."""
    return bool(current_app.runtime.plugins.authorize(auth, action, request))  # type: ignore[attr-defined]


def authorize(action: str, *, skip: Callable[[], bool] | None = None) -> Callable[[F], F]:
    """Decorator for a view: authenticate, then require `action`. The identity is in `g.auth`.

    `skip()` returning True (evaluated per request, e.g. `skip_for_health_probes`) lets the request
    through unauthenticated.
    """

    def decorate(view: F) -> F:
        attributes = {"lcore.action": str(action)}

        @functools.wraps(view)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if skip is None or not skip():
                with tracing.span("lcore.auth", attributes) as current:
                    auth = await authenticate_request()
                    current.set_attribute("enduser.id", auth.user_id)
                    await check_action(auth, action)
            return await view(*args, **kwargs)

        wrapper.lcore_action = action  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
