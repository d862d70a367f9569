"""MCP servers as Responses-API tools, with per-request header values resolved through hooks."""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import json
import os
import re
import ssl
import time
from pathlib import Path
from typing import Any

import certifi
import httpx
import structlog

from lcore_core import jsonsafe
from lcore_core.auth import AuthTuple
from lcore_core.errors import BackendUnavailable, BadRequest, Unauthorized
from lcore_core.hookspecs import hookimpl
from lcore_core.providers import ReadinessCheck
from lcore_core.runtime import Runtime

MCP_HEADERS = "MCP-HEADERS"
CLIENT = "client"
KUBERNETES = "kubernetes"
OAUTH = "oauth"
# The authentication modules whose callers' bearer token a `kubernetes` header forwards.
KUBERNETES_MODULES = ("k8s", "noop-with-token")
OAUTH_PROBE_TIMEOUT_S = 10.0
# How long a server's acceptance of an Authorization is trusted before it is asked again, and
# how many (server, credential) acceptances are remembered.
ACCEPTED_FOR_S = 30.0
ACCEPTED_MAX = 4096
log = structlog.get_logger("lcore.mcp")
_ENV = re.compile(r"^\$\{env\.([A-Za-z_][A-Za-z0-9_]*)\}$")


def parse_mcp_headers(raw: str | None, servers: list[Any]) -> dict[str, dict[str, str]]:
    """The `MCP-HEADERS` request header: `{server_name: {header: value}}`; 400 when malformed."""
    if not raw:
        return {}
    try:
        data = jsonsafe.loads(raw)
    except jsonsafe.TooDeep as exc:
        raise BadRequest("Invalid MCP-HEADERS header", str(exc)) from None
    except json.JSONDecodeError as exc:
        raise BadRequest("Invalid MCP-HEADERS header", f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not all(
            isinstance(v, dict) and all(isinstance(h, str) and isinstance(x, str)
                                        for h, x in v.items()) for v in data.values()):
        raise BadRequest("Invalid MCP-HEADERS header",
                         "expected a JSON object {server_name: {header: value}}")
    known = {s.name for s in servers}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadRequest("Invalid MCP-HEADERS header",
                         f"unknown MCP server(s): {', '.join(unknown)}; configured: "
                         f"{', '.join(sorted(known)) or 'none'}")
    return data


def client_header_names(server: Any) -> list[str]:
    """The authorization headers of `server` that the client supplies per request."""
    return [name for name, spec in server.authorization_headers.items()
            if spec.strip() == CLIENT]


def mcp_tools(runtime: Runtime, auth: AuthTuple, client_headers: dict[str, dict[str, str]],
              request_headers: dict[str, str] | None = None,
              skip: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """One `{"type": "mcp", ...}` tool per configured server, headers resolved for this caller.

    A server that needs client-supplied headers is left out when the client sent no entry for it
    in `MCP-HEADERS`; an entry that lacks one of them is a 400, not a tool failing later.
    `request_headers` are the incoming headers, of which each server's `headers` are forwarded.
    Servers named in `skip` (found unreachable) are left out.
    """
    incoming = {k.lower(): v for k, v in (request_headers or {}).items()}
    tools = []
    for server in runtime.mcp_servers():
        if server.name in skip:
            continue
        given = client_headers.get(server.name)
        needed = client_header_names(server)
        if needed and given is None:
            log.info("mcp server skipped: no client headers", server=server.name)
            continue
        given = given or {}
        missing = [h for h in needed if h.lower() not in {g.lower() for g in given}]
        if missing:
            raise BadRequest("Missing MCP client headers",
                             f"MCP server {server.name!r} needs the client header(s) "
                             f"{', '.join(missing)} in MCP-HEADERS")
        headers: dict[str, str] = {name: incoming[name.lower()] for name in server.headers
                                   if name.lower() in incoming}
        authorization = None
        for name, spec in server.authorization_headers.items():
            value = runtime.plugins.mcp_header_value(spec, server, name, auth, given)
            if value is None:
                continue
            if name.lower() == "authorization":
                # Llama Stack takes the token separately and sends it as `Bearer <token>`.
                authorization = value.removeprefix("Bearer ").strip()
            else:
                headers[name] = value
        tool: dict[str, Any] = {"type": "mcp", "server_label": server.name,
                                "server_url": server.url, "require_approval": "never"}
        if headers:
            tool["headers"] = headers
        if authorization:
            tool["authorization"] = authorization
        tools.append(tool)
    return tools


class McpHealth:
    """Which MCP servers answer, as last probed; a query offers only those that do.

    Llama Stack 0.7 refuses a whole Responses call (502) when it cannot list one server's tools,
    and then stalls every call for about 15 s: a dead server must not reach it. So a query first
    makes sure each server was probed within `fresh_s` (one probe in flight per server, shared
    by the queries waiting for it; a plain GET on loopback costs about a millisecond) and leaves
    out those that did not answer. Readiness probes and failed calls update the same record.
    """

    def __init__(self, fresh_s: float = 10.0, timeout_s: float = 2.0) -> None:
        self.fresh_s = fresh_s
        self.timeout_s = timeout_s
        self._checked: dict[str, tuple[float, str | None]] = {}
        self._probing: dict[str, asyncio.Task[str | None]] = {}
        # OAuth probes a server answered without a 401, by (url, digest of the Authorization
        # sent): when they were answered, oldest first (`check_oauth`).
        self._accepted: collections.OrderedDict[tuple[str, str], float] = \
            collections.OrderedDict()

    def accepted(self, url: str, authorization: str | None) -> bool:
        """Whether `url` accepted `authorization` within the last `ACCEPTED_FOR_S` seconds."""
        at = self._accepted.get(_credential(url, authorization))
        return at is not None and time.monotonic() - at < ACCEPTED_FOR_S

    def accept(self, url: str, authorization: str | None) -> None:
        key = _credential(url, authorization)
        self._accepted[key] = time.monotonic()
        self._accepted.move_to_end(key)
        while len(self._accepted) > ACCEPTED_MAX:
            self._accepted.popitem(last=False)

    def record(self, name: str, reason: str | None) -> None:
        """A probe's outcome: `reason` is None when the server answered."""
        before = self._checked.get(name, (0.0, None))[1]
        self._checked[name] = (time.monotonic(), reason)
        if reason is not None and before is None:
            log.warning("mcp server unavailable: left out of queries", server=name,
                        reason=reason)
        elif reason is None and before is not None:
            log.info("mcp server back", server=name)

    async def _probe(self, name: str, url: str, timeout: float) -> str | None:
        task = self._probing.get(name)
        if task is None:
            async def run() -> str | None:
                try:
                    reason = await probe(url, timeout)
                    self.record(name, reason)
                    return reason
                finally:
                    self._probing.pop(name, None)

            task = self._probing[name] = asyncio.ensure_future(run())
        return await asyncio.shield(task)

    def forget(self, name: str) -> None:
        """Drop what is known of `name` (unregistered: a new server may take its name)."""
        self._checked.pop(name, None)

    def reason(self, name: str) -> str | None:
        """Why `name` was last found unreachable (None: it answered, or was never probed)."""
        return self._checked.get(name, (0.0, None))[1]

    async def unreachable(self, servers: list[Any], *, force: bool = False) -> list[str]:
        """The names among `servers` that do not answer (probing those not checked lately)."""
        now = time.monotonic()
        stale = [s for s in servers
                 if force or now - self._checked.get(s.name, (-1e9, None))[0] > self.fresh_s]
        if stale:
            await asyncio.gather(*(self._probe(s.name, s.url, min(self.timeout_s,
                                                                  s.timeout or self.timeout_s))
                                   for s in stale))
        return [s.name for s in servers if self._checked.get(s.name, (0.0, None))[1]]


class CoreHeaderValues:
    """Resolves `client`, `oauth`, `kubernetes`, `${env.VAR}`, a file path, or a literal (tried
    last by the core)."""

    @hookimpl(trylast=True)
    def lcore_mcp_header_value(self, spec: str, header: str, auth: AuthTuple,
                               client_headers: dict[str, str]) -> str | None:
        if spec in (CLIENT, OAUTH):
            # `oauth`: the token the client obtained from this server's authorization server
            # (without one, `check_oauth` has already answered 401 when the server needs it).
            for name, value in client_headers.items():
                if name.lower() == header.lower():
                    return value
            return None
        if spec == KUBERNETES:
            # The caller's own bearer token (configuration allows this with KUBERNETES_MODULES).
            return f"Bearer {auth.token}" if auth.token else None
        env = _ENV.match(spec)
        if env:
            return os.environ.get(env.group(1))
        path = Path(spec)
        if spec.startswith(("/", "./", "~")) and path.expanduser().is_file():
            return path.expanduser().read_text(encoding="utf-8").strip()
        return spec


def oauth_headers(server: Any) -> list[str]:
    """The authorization headers of `server` that carry a client-obtained OAuth token."""
    return [name for name, spec in server.authorization_headers.items()
            if spec.strip() == OAUTH]


async def check_oauth(runtime: Runtime, auth: AuthTuple,
                      client_headers: dict[str, dict[str, str]]) -> None:
    """Upstream's OAuth probe: each server with an `oauth` header, and each server this call
    gives an Authorization header (from a file, `MCP-HEADERS` or the caller's own token), is
    asked (a GET, with the Authorization this caller's tool call would carry); a 401 from any
    of them becomes LCore's 401, relaying that server's WWW-Authenticate so the client can run
    the OAuth flow or send another token. An OAuth server that cannot be asked is a 401 as well
    (as upstream); another one is left to the MCP health checks (left out of the call).

    Unlike upstream, a server's acceptance of an Authorization is remembered for
    `ACCEPTED_FOR_S` seconds (the same credential is not asked again on every query), and a
    server without an `oauth` header that the health checks found unreachable is not asked
    (it is left out of the call anyway; asking would make the query wait for its timeout).
    """
    health = runtime.mcp_health
    probes = []
    for server in runtime.mcp_servers():
        authorization = None
        for name, spec in server.authorization_headers.items():
            if name.lower() == "authorization":
                authorization = runtime.plugins.mcp_header_value(
                    spec, server, name, auth, client_headers.get(server.name) or {})
        needs_oauth = bool(oauth_headers(server))
        if not (authorization or needs_oauth):
            continue
        if authorization and not authorization.startswith("Bearer "):
            authorization = f"Bearer {authorization}"
        if health is not None and (health.accepted(server.url, authorization) or (
                not needs_oauth and health.reason(server.name) is not None)):
            continue
        timeout = min(float(server.timeout or OAUTH_PROBE_TIMEOUT_S), OAUTH_PROBE_TIMEOUT_S)
        probes.append(_probe_oauth(server.url, authorization, timeout, health,
                                   unreachable_refuses=needs_oauth))
    refusals = await asyncio.gather(*probes, return_exceptions=True)
    for refusal in refusals:
        if isinstance(refusal, BaseException):
            raise refusal


def _credential(url: str, authorization: str | None) -> tuple[str, str]:
    return url, hashlib.sha256((authorization or "").encode()).hexdigest()


async def _probe_oauth(url: str, authorization: str | None, timeout: float,
                       health: McpHealth | None, *, unreachable_refuses: bool) -> None:
    refused = f"MCP server at {url} requires OAuth"
    headers = {"Authorization": authorization} if authorization else {}
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=tls_context()) as client:
            response = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("mcp oauth probe failed", url=url, error=type(exc).__name__)
        if not unreachable_refuses:
            return
        raise Unauthorized(cause=refused, challenge=None) from None
    if response.status_code != 401:
        if health is not None:
            health.accept(url, authorization)
        return
    challenge = response.headers.get("WWW-Authenticate")
    if challenge is None:
        log.warning("mcp server answered 401 without WWW-Authenticate", url=url)
    raise Unauthorized(cause=refused, challenge=challenge)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context (certifi's CAs, as httpx's default) for every client LCore opens to an
    MCP server: building one loads the CA bundle, ~30-50 ms of CPU, and a probe is on the
    path of the query that asked for it."""
    return ssl.create_default_context(cafile=certifi.where())


async def probe(url: str, timeout: float = 5.0) -> str | None:
    """None when something answers HTTP at `url` (any status); the reason otherwise."""
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=tls_context()) as client:
            await client.get(url)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


async def check_reachable(servers: list[Any]) -> None:
    """Refuse to start when a configured MCP server does not answer (names each one)."""
    reasons = await asyncio.gather(*(probe(s.url, s.timeout or 5.0) for s in servers))
    down = [f"{s.name} ({s.url}): {r}" for s, r in zip(servers, reasons, strict=True) if r]
    if down:
        raise BackendUnavailable(
            "MCP server unreachable",
            "; ".join(down) + " (set service.skip_unreachable_mcp: true to start anyway)")


async def list_server_tools(tool: dict[str, Any], timeout: float = 5.0) -> list[dict[str, Any]]:
    """The tools one MCP server offers (`name`, `description`, `inputSchema`), asked with the
    same headers and token the Responses call would carry (`tool` as built by `mcp_tools`).

    Raises `BackendUnavailable` when the server cannot be asked (or the `mcp` SDK is missing).
    """
    try:
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client
    except ImportError as exc:
        raise BackendUnavailable("MCP client not installed",
                                 f"{exc}; install it with: pip install 'lcore-core[mcp]'") from exc
    headers = dict(tool.get("headers") or {})
    if tool.get("authorization"):
        headers["Authorization"] = f"Bearer {tool['authorization']}"

    async def ask() -> list[dict[str, Any]]:
        async with (httpx.AsyncClient(headers=headers, timeout=timeout,
                                      verify=tls_context()) as http,
                    streamable_http_client(tool["server_url"], http_client=http) as streams,
                    ClientSession(streams[0], streams[1]) as session):
            await session.initialize()
            listed = await session.list_tools()
        # By alias: mcp 2.x names its fields in snake case (`input_schema`), 1.x did not.
        return [t.model_dump(exclude_none=True, by_alias=True) for t in listed.tools]

    try:
        return await asyncio.wait_for(ask(), timeout)
    except Exception as exc:  # anyio wraps transport errors in exception groups
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise BackendUnavailable("MCP server unavailable",
                                 f"{tool['server_label']} ({tool['server_url']}): "
                                 f"{reason}") from exc


class McpReadiness:
    """One readiness check per configured MCP server."""

    def __init__(self, servers: list[Any], health: McpHealth) -> None:
        self.servers = servers
        self.health = health

    @hookimpl
    def lcore_readiness(self) -> list[ReadinessCheck]:
        def check_for(server: Any) -> Any:
            async def check() -> str | None:
                # A fresh probe, whose answer is news for the queries as well.
                down = await self.health.unreachable([server], force=True)
                return self.health.reason(server.name) if down else None

            return check

        return [ReadinessCheck(f"mcp:{s.name}", check_for(s)) for s in self.servers]
