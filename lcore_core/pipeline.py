"""The query pipeline shared by `/v2/query`, `/v2/streaming_query` and plugins such as A2A.

prepare (quota check, model, shields, conversation, tools) -> the configured question_validity
shields (lcore_core.shields; a refused question skips the next step) -> Llama Stack Responses
call -> summarise the output (text, tool calls, RAG chunks, referenced documents, shield refusal) ->
finish (user DB, cache, quota consume, metrics, `lcore_query_completed`). A failed or cut call
consumes nothing and stores no half turn; a stream its owner interrupts (lcore_core.interrupts)
stores and charges what it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from lcore_core import rag, skills, summaries, tokens, tracing, transcripts
from lcore_core.auth import Action, AuthTuple, may
from lcore_core.cache import CacheEntry
from lcore_core.config.schema import LLAMA_STACK_CONVERSATION
from lcore_core.errors import Forbidden, LCoreError, NotFound, UnprocessableEntity
from lcore_core.events import QueryCompleted, QuotaTicket, Usage
from lcore_core.interrupts import INTERRUPTED_TEXT, LiveStream, close_markdown
from lcore_core.llama import backend_failed, llama_errors, model_refusal
from lcore_core.metrics import current_request
from lcore_core.runtime import Runtime
from lcore_core.schemas import conversation_key
from lcore_core.shields import validity
from lcore_core.shields.selection import NONE as NO_SHIELDS
from lcore_core.shields.selection import Shields, not_found
from lcore_core.shields.selection import configured as configured_shields
from lcore_core.shields.selection import select as select_named_shields
from lcore_core.skills.server import SERVER_LABEL as SKILLS_LABEL

log = structlog.get_logger("lcore.pipeline")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# Upstream's texts (clients show them).
MODEL_OVERRIDE_REFUSED = ("This instance does not permit overriding model/provider in the query "
                          "request (missing permission: model_override). Please remove the "
                          "model and provider fields from your request.")
MODEL_CACHE_SECONDS = 30.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def as_dict(obj: Any) -> Any:
    """A Llama Stack SDK object as plain data (plain data is returned as it is)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return obj


@dataclass
class QueryPlan:
    """Everything decided before the LLM call."""

    auth: AuthTuple
    query: str
    conversation_id: str
    new_conversation: bool
    model_id: str
    provider: str
    model: str
    instructions: str
    tools: list[dict[str, Any]]
    # Llama Stack's shields, passed on with the call (`shields`: the configured ones LCore runs).
    guardrails: list[str]
    input: Any
    generate_topic_summary: bool
    media_type: str
    endpoint: str
    # A chained conversation (service.conversation_state: response_chain) continues from its
    # last stored response; else the turn goes into the Llama Stack conversation of that id.
    chained: bool = True
    previous_response_id: str | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    streaming: bool = False
    ticket: QuotaTicket = field(default_factory=lambda: QuotaTicket("", ""))
    # MCP servers left out of this query because they do not answer.
    mcp_unavailable: list[str] = field(default_factory=list)
    # Chunks inline RAG put in the instructions (lcore_core.rag.retrieve).
    inline_hits: list[dict[str, Any]] = field(default_factory=list)
    # The rag_id (or store id) of file_search's store when the tool searches exactly one:
    # the `source` of the chunks it finds, as upstream names them.
    file_search_source: str | None = None
    # A stream that got its whole answer from Llama Stack.
    answered: bool = False
    # Keep a transcript when transcripts are on: the query endpoints do (as upstream), A2A not.
    transcript: bool = False
    # More Responses arguments of the caller's (temperature, tool_choice, ...), sent as given.
    args: dict[str, Any] = field(default_factory=dict)
    # Streaming: also yield each Llama Stack event as it came (`upstream` events).
    forward: bool = False
    started_at: str = field(default_factory=now_iso)
    started: float = field(default_factory=time.perf_counter)
    # False: Llama Stack keeps no response and `finish` stores no turn (the quota is still
    # spent); no Llama Stack conversation is joined, a chain may still be continued
    # (rlsapi's /v1/infer, `/v1/responses` with `store: false`).
    store: bool = True
    # Whose quota the call spends when not the caller's own (rlsapi's quota_subject).
    quota_subject: AuthTuple | None = None
    shields: Shields = NO_SHIELDS

    @property
    def quota_auth(self) -> AuthTuple:
        return self.quota_subject or self.auth


@dataclass
class QueryResult:
    """What the LLM produced, in upstream's field names."""

    response: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    rag_chunks: list[dict[str, Any]] = field(default_factory=list)
    referenced_documents: list[dict[str, Any]] = field(default_factory=list)
    shield_violations: list[str] = field(default_factory=list)
    llm_seconds: float = 0.0
    # True when the provider reported no usage and the token counts are LCore's estimate.
    tokens_estimated: bool = False
    # The stored Llama Stack response (the next turn of a chained conversation continues it).
    response_id: str | None = None
    # The configured question_validity shield that refused the question (no answer call made).
    refused_by: str | None = None
    # Llama Stack's whole response (the completed one, when streamed).
    raw: dict[str, Any] = field(default_factory=dict)


def estimate_usage(plan: QueryPlan, result: QueryResult) -> None:
    """Fill in token counts the provider did not report, and mark them as estimated.

    Input: the system prompt, the query with its attachments and what tools returned (earlier
    turns that Llama Stack replays are not counted, so it is a lower bound). Output: the answer
    and the tool calls' arguments.
    """
    if result.input_tokens or result.output_tokens:
        return
    sent = [plan.instructions, str(plan.input)]
    sent += [str(r.get("content") or "") for r in result.tool_results]
    received = [result.response] + [json.dumps(c.get("args") or {}) for c in result.tool_calls]
    result.input_tokens = sum(tokens.count(t) for t in sent)
    result.output_tokens = sum(tokens.count(t) for t in received)
    result.tokens_estimated = True


async def estimate_missing_usage(plan: QueryPlan, result: QueryResult) -> None:
    """`estimate_usage`, loading the tokenizer off the event loop first when it is needed."""
    await tokens.ready_if(not (result.input_tokens or result.output_tokens))
    estimate_usage(plan, result)


# --- preparation ---------------------------------------------------------------------------

# Upstream's attachment vocabulary: other values are refused with its 422 texts.
ATTACHMENT_TYPES = frozenset({"alert", "api object", "configuration", "error message", "event",
                              "image", "log", "stack trace"})
ATTACHMENT_CONTENT_TYPES = frozenset({"text/plain", "application/json", "application/yaml",
                                      "application/xml", "image/jpeg", "image/png"})


def check_attachments(attachments: list[dict[str, Any]]) -> None:
    """422 `Invalid attribute value` for an attachment type or content type upstream refuses.

    For the attachments a REST client writes (the query endpoints); A2A turns its file and
    data parts into attachments of its own kinds."""
    for a in attachments:
        for key, allowed, what in (("attachment_type", ATTACHMENT_TYPES, "type"),
                                   ("content_type", ATTACHMENT_CONTENT_TYPES, "content type")):
            if a[key] not in allowed:
                raise UnprocessableEntity(
                    "Invalid attribute value",
                    f"Invalid attachment {what} {a[key]}: must be one of {sorted(allowed)}")


async def prepare(runtime: Runtime, auth: AuthTuple, body: dict[str, Any], *,
                  endpoint: str, client_mcp_headers: dict[str, Any] | None = None,
                  request_headers: dict[str, str] | None = None) -> QueryPlan:
    """Check quota and decide model, conversation, tools and shields for one query."""
    if runtime.mcp_servers() and not body.get("no_tools"):
        from lcore_core.mcp import check_oauth

        # As upstream, before the quota: a client owing an MCP server's OAuth token hears so.
        await check_oauth(runtime, auth, client_mcp_headers or {})
    conversation_id = body.get("conversation_id")

    async def decide(ticket: QuotaTicket, meta: Any) -> QueryPlan:
        return await _decide(runtime, auth, body, endpoint, ticket, client_mcp_headers or {},
                             request_headers or {}, meta)

    return await reserve(runtime, auth, QuotaTicket(query=body["query"], endpoint=endpoint),
                         runtime.userdb.get(conversation_key(conversation_id))
                         if conversation_id else None,
                         decide)


async def reserve(runtime: Runtime, auth: AuthTuple, ticket: QuotaTicket,
                  lookup: Coroutine[Any, Any, Any] | None,
                  decide: Callable[[QuotaTicket, Any], Awaitable[QueryPlan]]) -> QueryPlan:
    """The quota check, then `decide(ticket, found)`; the reservation is given back if
    deciding fails.

    `lookup` (a follow-up turn's user DB read) runs while the quota is checked (two round
    trips on two connections, overlapped); `found` is its result, or `UNREAD` without one.
    The quota still speaks first: its refusal is the answer, whatever the read found.
    """
    pending = asyncio.ensure_future(lookup) if lookup is not None else None
    try:
        await runtime.plugins.quota_check(auth, ticket, runtime)
    except BaseException:
        if pending is not None:
            pending.add_done_callback(_discard)
            pending.cancel()
        raise
    try:
        found = await pending if pending is not None else UNREAD
        return await decide(ticket, found)
    except BaseException:
        await release(runtime, auth, ticket)
        raise


def _discard(task: asyncio.Future[Any]) -> None:
    """Done callback of work whose outcome nobody needs any more (nothing left unretrieved)."""
    if not task.cancelled():
        task.exception()


async def release(runtime: Runtime, auth: AuthTuple, ticket: QuotaTicket) -> None:
    """Give back a reservation the answer will not settle (once per ticket).

    Shielded: a cancelled request (client gone) must still give its reservation back.
    """
    if ticket.settled:
        return
    ticket.settled = True
    await asyncio.shield(runtime.plugins.quota_release(auth, ticket, runtime))


async def _decide(runtime: Runtime, auth: AuthTuple, body: dict[str, Any], endpoint: str,
                  ticket: QuotaTicket, client_mcp_headers: dict[str, Any],
                  request_headers: dict[str, str], meta: dict[str, Any] | None) -> QueryPlan:
    model_id, provider, model = await select_model(runtime, auth, body)
    # Before the conversation: a refused shield_ids must not take a pooled conversation.
    shields, guardrails = await choose_shields(runtime, auth, body.get("shield_ids"))
    conversation = await resolve_conversation(runtime, auth, body.get("conversation_id"), meta)
    unavailable: list[str] = []
    if runtime.mcp_health is not None and not body.get("no_tools"):
        unavailable = await runtime.mcp_health.unreachable(runtime.mcp_servers())
    tools = [] if body.get("no_tools") else await select_tools(
        runtime, auth, body.get("vector_store_ids"), client_mcp_headers, request_headers,
        skip=frozenset(unavailable))
    # Redaction covers all the turn sends on (the answer's call, the validity check, the
    # RAG search, the topic summary) and all LCore stores (the cache's transcript).
    query = shields.redact(body["query"])
    attachments = [{**a, "content": shields.redact(a["content"])}
                   for a in body.get("attachments") or []]
    hits = await rag.retrieve(runtime, query, body.get("vector_store_ids"))
    return QueryPlan(ticket=ticket, mcp_unavailable=unavailable, inline_hits=hits,
        file_search_source=file_search_source(runtime, tools),
        auth=auth, query=query, conversation_id=conversation.id,
        new_conversation=conversation.new, chained=conversation.chained,
        previous_response_id=conversation.previous_response_id,
        model_id=model_id, provider=provider, model=model,
        instructions=system_prompt(runtime, body.get("system_prompt")) + shields.redact(
            rag.context(hits)) + skills.instructions_for(runtime, tools),
        tools=tools, guardrails=guardrails, shields=shields,
        input=_input_text(query, attachments),
        generate_topic_summary=body.get("generate_topic_summary") is not False,
        media_type=body.get("media_type") or "application/json", endpoint=endpoint,
        attachments=attachments,
    )


def _input_text(query: str, attachments: list[dict[str, Any]]) -> str:
    parts = [query]
    for a in attachments:
        parts.append(f"\n\n[Attachment: {a['attachment_type']} ({a['content_type']})]\n"
                     f"{a['content']}")
    return "".join(parts)


def system_prompt(runtime: Runtime, requested: str | None) -> str:
    custom = runtime.config.get("customization") or {}
    if requested and not custom.get("disable_query_system_prompt"):
        return requested
    return custom.get("system_prompt") or DEFAULT_SYSTEM_PROMPT


async def list_models(runtime: Runtime) -> list[dict[str, Any]]:
    """Llama Stack's models, cached briefly (model selection runs on every query)."""
    async def fetch() -> list[dict[str, Any]]:
        with llama_errors("models.list"):
            return [model_entry(m) for m in await runtime.llama.client.models.list()]

    return await runtime.cached("models", MODEL_CACHE_SECONDS, fetch)


def model_entry(model: Any) -> dict[str, Any]:
    """Llama Stack's OpenAI-style model as upstream's model dict (also used by `/v1/models`)."""
    data = as_dict(model)
    custom = data.get("custom_metadata") or {}
    identifier = str(data.get("id") or data.get("identifier") or "")
    model_type = str(custom.get("model_type") or "unknown")
    return {
        "identifier": identifier,
        "metadata": {k: v for k, v in custom.items()
                     if k not in ("provider_id", "provider_resource_id", "model_type")},
        "api_model_type": model_type,
        "provider_id": str(custom.get("provider_id") or identifier.split("/")[0]),
        "type": data.get("object") or "model",
        "provider_resource_id": str(custom.get("provider_resource_id")
                                    or identifier.split("/", 1)[-1]),
        "model_type": model_type,
    }


async def select_model(runtime: Runtime, auth: AuthTuple, body: dict[str, Any], *,
                       preferred: tuple[str, str] | None = None) -> tuple[str, str, str]:
    """Request model (needs MODEL_OVERRIDE), else `preferred` (model, provider), else the
    configured default, else the first LLM."""
    models = [m for m in await list_models(runtime) if m["model_type"] == "llm"]
    wanted_model, wanted_provider = body.get("model"), body.get("provider")
    if wanted_model:
        if not may(auth, Action.MODEL_OVERRIDE):
            raise Forbidden(MODEL_OVERRIDE_REFUSED,
                            "User lacks model_override permission required to override "
                            "model/provider.")
    elif preferred is not None:
        wanted_model, wanted_provider = preferred
    else:
        inference = runtime.config.inference
        wanted_model, wanted_provider = inference.default_model, inference.default_provider
    if not wanted_model:
        if not models:
            raise NotFound("Model not found", "No Model is configured")
        first = models[0]
        return first["identifier"], first["provider_id"], first["provider_resource_id"]
    for m in models:
        if m["provider_id"] == wanted_provider and wanted_model in (
                m["provider_resource_id"], m["identifier"]):
            return m["identifier"], m["provider_id"], m["provider_resource_id"]
    valid = ", ".join(f"{m['provider_id']}/{m['provider_resource_id']}" for m in models)
    raise NotFound("Model not found",
                   f"Model with ID {wanted_model} does not exist (provider {wanted_provider}; "
                   f"valid: {valid or 'none'})")


@dataclass
class Conversation:
    id: str
    new: bool
    chained: bool
    previous_response_id: str | None = None


def new_conversation_id() -> str:
    """An id of the shape Llama Stack gives its conversations ("conv_" + 48 hex digits)."""
    return "conv_" + secrets.token_hex(24)


UNREAD: Any = object()  # resolve_conversation's `meta` when the caller has not read it


async def resolve_conversation(runtime: Runtime, auth: AuthTuple, conversation_id: str | None,
                               meta: dict[str, Any] | None = UNREAD) -> Conversation:
    """An existing conversation the caller may continue, or a new one (`meta`: the user DB's
    row for `conversation_id`, when already read).

    A new conversation is a chain of stored responses that LCore names itself (one Llama Stack
    call per turn), unless `service.conversation_state` asks for Llama Stack conversations.
    An existing one continues the way it began (the user DB knows: `response_ids` or None).
    """
    if conversation_id:
        key = conversation_key(conversation_id)
        if meta is UNREAD:
            meta = await runtime.userdb.get(key)
        owned = meta is not None and meta["user_id"] == auth.user_id
        if meta is None or not (owned or may(auth, Action.QUERY_OTHERS_CONVERSATIONS)):
            raise NotFound.of("Conversation", conversation_id)  # as the client wrote it
        chain = meta["response_ids"]
        return Conversation(key, False, chain is not None, chain[-1] if chain else None)
    if runtime.config.service.conversation_state == LLAMA_STACK_CONVERSATION:
        with llama_errors():
            return Conversation(await runtime.llama.conversations.take(), True, False)
    return Conversation(new_conversation_id(), True, True)


SHIELDS_OVERRIDE_REFUSED = (
    "This instance does not let this user turn shields off (missing permission: "
    "override_shields). Leave out shield_ids, or name every shield")


async def choose_shields(runtime: Runtime, auth: AuthTuple,
                         requested: list[str] | None) -> tuple[Shields, list[str]]:
    """The shields a request runs: LCore's configured ones and Llama Stack's (its guardrails).

    The one place a client's `shield_ids` is judged, for every route that takes it: the
    customization switch (422), names that exist nowhere (404), then leaving out any shield
    (`[]` or a subset) needs the `override_shields` action (403).
    """
    if requested is not None:
        requested = list(dict.fromkeys(requested))
    shields, others = select_named_shields(runtime, requested)
    guardrails = await select_shields(runtime, others)
    if requested is not None and not may(auth, Action.OVERRIDE_SHIELDS):
        every = [*configured_shields(runtime).names, *await llama_shield_ids(runtime)]
        left_out = sorted(set(every) - set(requested))
        if left_out:
            raise Forbidden(SHIELDS_OVERRIDE_REFUSED,
                            "User lacks override_shields permission required to run a query "
                            "without some of the shields")
    return shields, guardrails


async def llama_shield_ids(runtime: Runtime) -> list[str]:
    """Llama Stack's shields (cached briefly, like every listing consulted per query); none
    when the backend has no safety API (OGX: warned once at start-up)."""
    if not runtime.llama.has_safety_api:
        return []
    try:
        return await _cached_ids(runtime, "shields", lambda c: c.shields.list())
    except NotFound:
        # A backend first reached after start-up (degraded start) that turns out to be OGX.
        runtime.llama.safety_api_missing()
        return []


async def select_shields(runtime: Runtime, requested: list[str] | None) -> list[str]:
    """Llama Stack's shields for the call: those named (each must exist), else all of them."""
    if requested is not None and not requested:
        return []
    available = await llama_shield_ids(runtime)
    if requested is None:
        return available
    missing = [name for name in requested if name not in available]
    if missing:
        raise not_found(missing)
    return list(requested)


async def select_tools(runtime: Runtime, auth: AuthTuple, vector_store_ids: list[str] | None,
                       client_headers: dict[str, Any], request_headers: dict[str, str],
                       skip: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    stores = None if vector_store_ids is None else rag.to_store_ids(runtime.config,
                                                                     vector_store_ids)
    if stores is None:
        stores = await rag.tool_store_ids(runtime)  # the `rag.tool` list, when configured
    if stores is None:
        stores = await all_vector_store_ids(runtime)
    if stores:
        search: dict[str, Any] = {"type": "file_search", "vector_store_ids": stores}
        if (most := rag.tool_max_chunks(runtime.config)) is not None:
            search["max_num_results"] = most
        tools.append(search)
    from lcore_core.mcp import mcp_tools

    tools.extend(mcp_tools(runtime, auth, client_headers, request_headers, skip))
    tools.extend(skills.skill_tools(runtime))
    return tools


def file_search_source(runtime: Runtime, tools: list[dict[str, Any]]) -> str | None:
    """The rag_id (else the id) of the one store the file_search tool searches, if one."""
    stores: list[str] = next(
        (t["vector_store_ids"] for t in tools if t.get("type") == "file_search"), [])
    if len(stores) != 1:
        return None
    return rag.rag_id_of(runtime.config, stores[0]) or stores[0]


async def all_vector_store_ids(runtime: Runtime) -> list[str]:
    return await _cached_ids(runtime, "vector_stores", lambda c: c.vector_stores.list())


async def _cached_ids(runtime: Runtime, key: str, fetch: Any) -> list[str]:
    """Ids of a Llama Stack listing, cached briefly: it is consulted on every query."""
    async def ids() -> list[str]:
        with llama_errors(f"{key}.list"):
            page = await fetch(runtime.llama.client)
        return [getattr(s, "identifier", None) or s.id for s in getattr(page, "data", page)]

    return await runtime.cached(key, MODEL_CACHE_SECONDS, ids)


# --- the call ------------------------------------------------------------------------------


def _create_args(runtime: Runtime, plan: QueryPlan) -> dict[str, Any]:
    args: dict[str, Any] = {}
    # The configured bounds on one answer's model rounds and tool calls, as upstream sends them
    # with its queries (not with rlsapi's stateless call); an unset one is left out, so Llama
    # Stack's own default applies. A caller's own values (`plan.args`) come after.
    inference = runtime.config.inference
    if plan.store and inference.max_infer_iters is not None:
        args["max_infer_iters"] = inference.max_infer_iters
    if plan.store and inference.max_tool_calls is not None:
        args["max_tool_calls"] = inference.max_tool_calls
    args.update(plan.args)
    args.update(model=plan.model_id, input=plan.input, instructions=plan.instructions,
                store=plan.store)
    if not plan.chained and plan.store:
        args["conversation"] = plan.conversation_id
    elif plan.previous_response_id:
        args["previous_response_id"] = plan.previous_response_id
    if plan.tools:
        args["tools"] = plan.tools
    if plan.guardrails:
        args["guardrails"] = plan.guardrails
    return args


def _call_headers(plan: QueryPlan) -> dict[str, str]:
    """A call offering MCP tools gets a connection of its own.

    When Llama Stack 0.7 cannot reach an MCP server it answers 502 and then breaks the
    connection without closing it; a later call that reused it would hang until a read error.
    A traced request also passes its `traceparent` on, so Llama Stack's spans join its trace.
    """
    headers = tracing.outgoing_headers()
    if any(t.get("type") == "mcp" for t in plan.tools):
        headers["Connection"] = "close"
    return headers


async def _open_stream(runtime: Runtime, plan: QueryPlan) -> Any:
    """The upstream event stream, retried without MCP servers that turn out to be dead."""
    while True:
        try:
            with llama_errors("responses.create", {"gen_ai.request.model": plan.model_id}):
                # Plain JSON events, as for `run`: the client's typed events cost a pydantic
                # model per chunk, which `as_dict` then took apart.
                return await runtime.llama.respond_stream(_create_args(runtime, plan),
                                                          _call_headers(plan))
        except LCoreError as exc:
            if not await _without_dead_mcp(runtime, plan, exc):
                raise


async def _without_dead_mcp(runtime: Runtime, plan: QueryPlan, exc: LCoreError) -> bool:
    """After Llama Stack refused the call: leave out the offered MCP servers that do not answer.

    True when some were left out, so the call is worth a retry (Llama Stack refuses a whole
    call when it cannot list one server's tools; the others should still work). Each retry
    leaves out at least one more server, so the retries end.
    """
    offered = {t.get("server_label") for t in plan.tools if t.get("type") == "mcp"}
    if exc.status < 500 or not offered or runtime.mcp_health is None:
        return False
    servers = [s for s in runtime.mcp_servers() if s.name in offered]
    dead = await runtime.mcp_health.unreachable(servers, force=True)
    if not dead:
        return False
    plan.tools = [t for t in plan.tools if t.get("server_label") not in dead]
    plan.mcp_unavailable.extend(n for n in dead if n not in plan.mcp_unavailable)
    return True


async def check_question(runtime: Runtime, plan: QueryPlan) -> validity.Verdict:
    """The configured question_validity shields' verdict on the (redacted) question.

    A refused question is still a turn, as upstream has it: it is stored with the fixed
    answer, and a Llama Stack conversation gets both messages. Failing checks fail the query.
    """
    started = time.perf_counter()
    try:
        verdict = await validity.check(runtime, plan.shields.validity, plan.input)
        if verdict.refused_by and not plan.chained:
            await validity.record_refusal(runtime, plan.conversation_id, plan.input,
                                          verdict.response)
    except LCoreError as exc:
        await _failed(runtime, plan, exc, time.perf_counter() - started)
        raise
    except BaseException:
        await release(runtime, plan.quota_auth, plan.ticket)
        raise
    if verdict.refused_by:
        log.info("question refused", shield=verdict.refused_by)
    return verdict


def refusal(verdict: validity.Verdict) -> QueryResult:
    """The turn of a question a question_validity shield refused: its fixed answer."""
    return QueryResult(response=verdict.response, input_tokens=verdict.input_tokens,
                       output_tokens=verdict.output_tokens, llm_seconds=verdict.seconds,
                       shield_violations=[verdict.response], refused_by=verdict.refused_by)


def add_check(result: QueryResult, verdict: validity.Verdict) -> None:
    """The validity checks' tokens and time count with the answer's (as upstream counts them)."""
    result.input_tokens += verdict.input_tokens
    result.output_tokens += verdict.output_tokens
    result.llm_seconds += verdict.seconds


async def run(runtime: Runtime, plan: QueryPlan) -> QueryResult:
    """Non-streaming: the validity checks, then one Responses call, summarised."""
    verdict = await check_question(runtime, plan)
    if verdict.refused_by:
        return refusal(verdict)
    started = time.perf_counter()
    admitted = await runtime.llama.answers.admit()
    answered = False
    try:
        while True:
            try:
                with llama_errors("responses.create", {"gen_ai.request.model": plan.model_id}):
                    # Plain JSON: building the client's pydantic models, only to dump them
                    # again, cost more than everything else LCore does per query.
                    response = await runtime.llama.respond(_create_args(runtime, plan),
                                                           _call_headers(plan))
                answered = True
                break
            except LCoreError as exc:
                if not await _without_dead_mcp(runtime, plan, exc):
                    raise
    except LCoreError as exc:
        await _failed(runtime, plan, exc, time.perf_counter() - started)
        raise
    except BaseException:
        # Cancelled (client gone, task cancelled): nothing was used, refund the reservation.
        await release(runtime, plan.quota_auth, plan.ticket)
        raise
    finally:
        runtime.llama.answers.settle(admitted, answered)
    result = summarise(as_dict(response))
    result.response = plan.shields.redact(result.response)
    result.raw = as_dict(response)
    add_inline_hits(result, plan)
    result.llm_seconds = time.perf_counter() - started
    await estimate_missing_usage(plan, result)
    add_check(result, verdict)
    return result


def summarise(response: dict[str, Any]) -> QueryResult:
    result = QueryResult()
    usage = response.get("usage") or {}
    result.input_tokens = int(usage.get("input_tokens") or 0)
    result.output_tokens = int(usage.get("output_tokens") or 0)
    texts: list[str] = []
    for round_no, item in enumerate(response.get("output") or [], start=1):
        kind = item.get("type")
        if kind == "message":
            text, refusal = message_text(item)
            texts.append(text)
            if refusal:
                result.shield_violations.append(refusal)
        else:
            add_tool_item(result, item, round_no)
    result.response = "".join(texts)
    result.response_id = response.get("id")
    return result


def message_text(item: dict[str, Any]) -> tuple[str, str | None]:
    content = item.get("content")
    if isinstance(content, str):
        return content, None
    texts, refusal = [], None
    for part in content or []:
        if part.get("type") == "refusal":
            refusal = part.get("refusal") or "refused"
            texts.append(refusal)
        elif "text" in part:
            texts.append(part.get("text") or "")
    return "".join(texts), refusal


def add_hit(result: QueryResult, hit: dict[str, Any]) -> None:
    """One retrieved chunk (file_search result or inline RAG hit) as a RAG chunk and its
    document (once per title and link), in upstream's fields: `source` is the knowledge
    source's rag_id (inline: the configured source; file_search: the chunk's own `source`
    attribute until `add_inline_hits` knows the searched store), `attributes` the chunk's
    metadata."""
    title, url = rag.title_and_url(hit)
    attrs = hit.get("attributes") or {}
    source = hit.get("source") or (str(attrs["source"]) if attrs.get("source") else None)
    result.rag_chunks.append({"content": hit.get("text") or "", "source": source,
                              "score": hit.get("score"), "attributes": attrs or None})
    if not any((d["doc_title"], d["doc_url"]) == (title, url)
               for d in result.referenced_documents):
        result.referenced_documents.append({"doc_title": title, "doc_url": url,
                                            "source": source,
                                            "document_id": rag.document_id(hit)})


def add_inline_hits(result: QueryResult, plan: QueryPlan) -> None:
    """Inline RAG's chunks first, then whatever file_search found (named for the one store
    it searched, when it searched one)."""
    if plan.file_search_source:
        for entry in (*result.rag_chunks, *result.referenced_documents):
            if not entry.get("source"):
                entry["source"] = plan.file_search_source
    found, result.rag_chunks, docs = result.rag_chunks, [], result.referenced_documents
    result.referenced_documents = []
    for hit in plan.inline_hits:
        add_hit(result, hit)
    result.rag_chunks.extend(found)
    known = {(d["doc_title"], d["doc_url"]) for d in result.referenced_documents}
    result.referenced_documents.extend(
        d for d in docs if (d["doc_title"], d["doc_url"]) not in known)


def add_tool_item(result: QueryResult, item: dict[str, Any], round_no: int) -> None:
    """Record a tool call item as upstream's tool call and result, typed as upstream types
    them: `file_search_call`, `mcp_list_tools` (an MCP server's tools listed), `mcp_call`, and
    `function_call` / `function_call_output` for the skill tools (function tools in upstream's
    agent; an MCP server inside LCore here, whose listing is not shown)."""
    kind = item.get("type")
    call_id = item.get("id") or item.get("call_id") or f"call_{round_no}"
    if kind == "file_search_call":
        result.tool_calls.append({"id": call_id, "name": "file_search",
                                  "args": {"queries": item.get("queries") or []},
                                  "type": kind})
        results = item.get("results") or []
        result.tool_results.append({"id": call_id, "status": item.get("status") or "completed",
                                    "content": json.dumps({"results": results}, default=str),
                                    "type": kind, "round": round_no})
        for hit in results:
            add_hit(result, hit)
    elif kind == "mcp_list_tools" and item.get("server_label") != SKILLS_LABEL:
        label = item.get("server_label") or ""
        error = item.get("error")
        tools = [{"name": t.get("name") or "", "description": t.get("description"),
                  "input_schema": t.get("input_schema")} for t in item.get("tools") or []]
        result.tool_calls.append({"id": call_id, "name": kind, "args": {"server_label": label},
                                  "type": kind})
        result.tool_results.append({
            "id": call_id, "status": "failure" if error else "success",
            "content": str(error) if error else json.dumps({"server_label": label,
                                                            "tools": tools}),
            "type": kind, "round": round_no})
    elif kind in ("mcp_call", "function_call"):
        try:
            args = json.loads(item.get("arguments") or "{}")
        except json.JSONDecodeError:
            args = {"raw": item.get("arguments")}
        skill = kind == "mcp_call" and item.get("server_label") == SKILLS_LABEL
        call_type, result_type = ("function_call", "function_call_output") if skill else (
            kind, kind)
        result.tool_calls.append({"id": call_id, "name": item.get("name") or "",
                                  "args": args if isinstance(args, dict) else {"value": args},
                                  "type": call_type})
        if kind == "mcp_call":
            error = item.get("error")
            result.tool_results.append({"id": call_id, "status": "failure" if error else
                                        "success", "content": error or item.get("output"),
                                        "type": result_type, "round": round_no})


# --- finishing -----------------------------------------------------------------------------


async def finish(runtime: Runtime, plan: QueryPlan, result: QueryResult) -> dict[str, int]:
    """Store the turn, consume quota, report; returns the remaining quota per limiter."""
    usage = Usage(result.input_tokens, result.output_tokens, plan.provider, plan.model,
                  estimated=result.tokens_estimated)
    # The tokens are spent once the LLM answered, whatever happens to storage below.
    plan.ticket.settled = True
    entry = CacheEntry(
        query=plan.query, response=result.response, provider=plan.provider, model=plan.model,
        started_at=plan.started_at, completed_at=now_iso(),
        referenced_documents=result.referenced_documents, tool_calls=result.tool_calls,
        tool_results=result.tool_results, attachments=plan.attachments)
    # The quota settlement runs beside the turn's storage (each its own transaction on its own
    # connection), so the answer waits for the longer of the two, not their sum. The cache
    # entry is written only after its user DB row: a cached turn never exists alone.
    outcomes = await asyncio.gather(
        runtime.plugins.quota_consume(plan.quota_auth, usage, plan.ticket, runtime),
        _store_turn(runtime, plan, entry, result.response_id) if plan.store else _nothing(),
        transcripts.store(runtime, plan, result), return_exceptions=True)
    if plan.new_conversation and not plan.chained:
        runtime.llama.conversations.top_up()
    for outcome in outcomes:  # quota and user DB errors (and cancellation) go on up
        if isinstance(outcome, BaseException):
            raise outcome
    _metrics(runtime, plan, result)
    await runtime.plugins.query_completed(QueryCompleted(
        user_id=plan.auth.user_id, conversation_id=plan.conversation_id,
        provider=plan.provider, model=plan.model, endpoint=plan.endpoint,
        input_tokens=result.input_tokens, output_tokens=result.output_tokens,
        tokens_estimated=result.tokens_estimated,
        duration_s=time.perf_counter() - plan.started, llm_duration_s=result.llm_seconds,
        streaming=plan.streaming,
        shield_violations=tuple(result.shield_violations)), runtime)
    if plan.new_conversation and plan.generate_topic_summary and plan.store:
        # Batched and bounded background work, never on the answer's path.
        request_summary(runtime, plan)
    return await runtime.plugins.quota_status(plan.auth, runtime)


async def finish_stateless(runtime: Runtime, plan: QueryPlan, result: QueryResult, *,
                           consume: bool = True) -> None:
    """`finish` for a call that keeps no turn: settle the quota (consume, or with `consume`
    False give the reservation back), record metrics, report the query."""
    if consume and not plan.ticket.settled:
        plan.ticket.settled = True
        await runtime.plugins.quota_consume(
            plan.quota_auth, Usage(result.input_tokens, result.output_tokens, plan.provider,
                                   plan.model, estimated=result.tokens_estimated),
            plan.ticket, runtime)
    else:
        await release(runtime, plan.quota_auth, plan.ticket)
    _metrics(runtime, plan, result)
    await runtime.plugins.query_completed(QueryCompleted(
        user_id=plan.auth.user_id, conversation_id=None, provider=plan.provider,
        model=plan.model, endpoint=plan.endpoint, input_tokens=result.input_tokens,
        output_tokens=result.output_tokens, tokens_estimated=result.tokens_estimated,
        duration_s=time.perf_counter() - plan.started, llm_duration_s=result.llm_seconds,
        shield_violations=tuple(result.shield_violations)), runtime)


async def _nothing() -> None:
    return None


async def _store_turn(runtime: Runtime, plan: QueryPlan, entry: CacheEntry,
                      response_id: str | None) -> None:
    await runtime.userdb.record_turn(plan.conversation_id, plan.auth.user_id,
                                     model=plan.model, provider=plan.provider,
                                     chained=plan.chained, response_id=response_id)
    try:
        await runtime.cache.insert(plan.auth.user_id, plan.conversation_id, entry)
    except Exception as exc:  # the cache is a copy; the user DB and Llama Stack hold the turn
        log.error("cache insert failed", error=f"{type(exc).__name__}: {exc}")


def request_summary(runtime: Runtime, plan: QueryPlan) -> None:
    """Ask for a new conversation's topic summary (lcore_core.summaries), unless switched off."""
    if runtime.summaries is None:
        return
    runtime.summaries.request(summaries.Item(
        auth=plan.auth, quota_auth=plan.quota_auth, conversation_id=plan.conversation_id,
        question=plan.query, provider=plan.provider, model=plan.model, model_id=plan.model_id))


def _metrics(runtime: Runtime, plan: QueryPlan, result: QueryResult) -> None:
    m = runtime.metrics
    labels = (plan.provider, plan.model, plan.endpoint)
    m.llm_calls.labels(*labels).inc()
    m.tokens_sent.labels(*labels).inc(result.input_tokens)
    m.tokens_received.labels(*labels).inc(result.output_tokens)
    m.llm_duration.labels(*labels).observe(result.llm_seconds)
    if result.shield_violations:
        m.validation_errors.labels(plan.endpoint).inc()
        m.shield_violations.labels(violation_label(plan, result)).inc()
    stats = current_request()
    if stats is not None:  # for the request log line
        stats.provider, stats.model = plan.provider, plan.model
        stats.input_tokens = (stats.input_tokens or 0) + result.input_tokens
        stats.output_tokens = (stats.output_tokens or 0) + result.output_tokens


def violation_label(plan: QueryPlan, result: QueryResult) -> str:
    """The `shield` label of a refusal: a configured shield's name, the one Llama Stack shield
    of the call, else `unknown`; never a string a client chose (a bounded label set)."""
    if result.refused_by:  # a configured shield (LCore's own shields say which fired)
        return result.refused_by
    # Llama Stack's refusal does not say which of several shields fired.
    return plan.guardrails[0] if len(plan.guardrails) == 1 else "unknown"


async def _failed(runtime: Runtime, plan: QueryPlan, exc: BaseException, seconds: float) -> None:
    await release(runtime, plan.quota_auth, plan.ticket)
    if plan.new_conversation and not plan.chained:
        runtime.llama.conversations.top_up()
    runtime.metrics.llm_failures.labels(plan.provider, plan.model, plan.endpoint).inc()
    await runtime.plugins.query_completed(QueryCompleted(
        user_id=plan.auth.user_id, conversation_id=plan.conversation_id or None,
        provider=plan.provider, model=plan.model, endpoint=plan.endpoint,
        duration_s=time.perf_counter() - plan.started, llm_duration_s=seconds,
        streaming=plan.streaming, error=f"{type(exc).__name__}: {exc}"), runtime)


# --- streaming -----------------------------------------------------------------------------


@dataclass
class StreamEvent:
    event: str
    data: dict[str, Any]


async def stream(runtime: Runtime, plan: QueryPlan, *,
                 raise_on_open: bool = False) -> AsyncGenerator[StreamEvent, None]:
    """Streaming: yields upstream's SSE events; `finish` runs only after a complete stream.

    The first event (`start`) comes once Llama Stack accepted the call. If it did not, the
    stream is `start` + `error`, or with `raise_on_open` the first step raises the
    `LCoreError`, so an endpoint that waits for it can still answer with a plain HTTP error.
    If the client goes away the generator is closed: the upstream stream is closed with it,
    nothing is stored and the quota reservation is released.
    """
    plan.streaming = True
    # The first answers of a fresh Llama Stack go one at a time (LlamaStack.answers): a stream
    # holds the gate until its last event.
    admitted = await runtime.llama.answers.admit()
    streams = runtime.streams
    live = streams.open(plan.auth.user_id) if streams is not None else LiveStream(
        str(uuid.uuid4()), plan.auth.user_id)
    try:
        async for event in _stream(runtime, plan, raise_on_open, live):
            yield event
    finally:
        if streams is not None:
            streams.close(live)
        runtime.llama.answers.settle(admitted, plan.answered)
        if not plan.ticket.settled:
            await release(runtime, plan.quota_auth, plan.ticket)


async def _stream(runtime: Runtime, plan: QueryPlan, raise_on_open: bool,
                  live: LiveStream) -> AsyncIterator[StreamEvent]:
    result = QueryResult()
    waiting = 0.0
    start = StreamEvent("start", {"conversation_id": plan.conversation_id,
                                  "request_id": live.request_id})
    started = time.perf_counter()
    try:
        verdict = await check_question(runtime, plan)  # reports its own failure
        if not verdict.refused_by:
            started = time.perf_counter()
            try:
                upstream = await _open_stream(runtime, plan)
            except LCoreError as exc:
                await _failed(runtime, plan, exc, time.perf_counter() - started)
                raise
            waiting += time.perf_counter() - started
    except LCoreError as exc:
        if raise_on_open:
            raise
        yield start
        yield StreamEvent("error", {"status_code": exc.status, "response": exc.response,
                                    "cause": exc.cause})
        return
    if verdict.refused_by:
        async for event in _refused_stream(runtime, plan, verdict, start):
            yield event
        return
    token_no = 0
    round_no = 0
    texts: list[str] = []
    completed: dict[str, Any] | None = None
    iterator = upstream.__aiter__()
    try:
        yield start  # inside: a client gone right after it still closes the upstream stream
        while not live.interrupted:
            t0 = time.perf_counter()
            try:
                live.waiting = asyncio.current_task()
                with llama_errors():
                    chunk = await iterator.__anext__()
            except StopAsyncIteration:
                break
            except asyncio.CancelledError:
                if not live.caught():
                    raise
                break
            except LCoreError as exc:
                # Failed before saying anything (a streamed call learns of a dead MCP server
                # only here): without the dead servers, the client never sees the retry.
                if token_no or round_no or not await _without_dead_mcp(runtime, plan, exc):
                    raise
                await _close_quietly(upstream)
                upstream = await _open_stream(runtime, plan)
                iterator = upstream.__aiter__()
                continue
            finally:
                live.waiting = None
                waiting += time.perf_counter() - t0
            data = as_dict(chunk)
            kind = data.get("type", "")
            if plan.forward:
                yield StreamEvent("upstream", data)
            if kind == "response.output_text.delta":
                delta = data.get("delta") or ""
                texts.append(delta)
                yield StreamEvent("token", {"id": token_no, "token": delta})
                token_no += 1
            elif kind == "response.output_item.done":
                item = data.get("item") or {}
                if item.get("type") == "message":
                    text, refusal = message_text(item)
                    if refusal:
                        result.shield_violations.append(refusal)
                        if not texts:
                            texts.append(text)
                            yield StreamEvent("token", {"id": token_no, "token": text})
                            token_no += 1
                elif item.get("type") in ("file_search_call", "mcp_call", "mcp_list_tools",
                                          "function_call"):
                    round_no += 1
                    before_calls, before_results = (len(result.tool_calls),
                                                    len(result.tool_results))
                    add_tool_item(result, item, round_no)
                    for call in result.tool_calls[before_calls:]:
                        yield StreamEvent("tool_call", call)
                    for res in result.tool_results[before_results:]:
                        yield StreamEvent("tool_result", res)
            elif kind in ("response.completed", "response.incomplete"):
                completed = data.get("response") or {}
            elif kind == "response.failed":
                error = (data.get("response") or {}).get("error") or {}
                message = str(error.get("message") or error or "response.failed")
                # the model's own refusals in upstream's words, as when not streaming
                raise model_refusal(message, model=plan.model_id) or backend_failed(message)
    except LCoreError as exc:
        await _failed(runtime, plan, exc, waiting)
        yield StreamEvent("error", {"status_code": exc.status, "response": exc.response,
                                    "cause": exc.cause})
        return
    finally:
        await _close_quietly(upstream)
    if live.interrupted and completed is None:
        async for event in _interrupted(runtime, plan, result, "".join(texts), token_no,
                                        waiting, verdict, live):
            yield event
        return
    if completed is None:
        cut = LCoreError("Llama Stack stream ended early", "no response.completed event")
        await _failed(runtime, plan, cut, waiting)
        yield StreamEvent("error", {"status_code": 503, "response": cut.response,
                                    "cause": cut.cause})
        return
    final = summarise(completed)
    result.raw = completed
    # An output shield replaces the streamed text: the completed response carries the refusal.
    result.response = final.response if final.shield_violations else (
        "".join(texts) or final.response)
    # The tokens went out as they came; the whole answer is redacted (as upstream does).
    result.response = plan.shields.redact(result.response)
    result.shield_violations = result.shield_violations or final.shield_violations
    result.input_tokens, result.output_tokens = final.input_tokens, final.output_tokens
    result.response_id = final.response_id
    await estimate_missing_usage(plan, result)
    if not result.tool_calls:
        result.tool_calls, result.tool_results = final.tool_calls, final.tool_results
    result.rag_chunks = result.rag_chunks or final.rag_chunks
    result.referenced_documents = result.referenced_documents or final.referenced_documents
    add_inline_hits(result, plan)
    result.llm_seconds = waiting
    add_check(result, verdict)
    plan.answered = True
    yield StreamEvent("turn_complete", {"token": result.response})
    quotas = await finish(runtime, plan, result)
    yield _end_event(plan, result, quotas)


async def _interrupted(runtime: Runtime, plan: QueryPlan, result: QueryResult, text: str,
                       token_no: int, waiting: float, verdict: validity.Verdict,
                       live: LiveStream) -> AsyncIterator[StreamEvent]:
    """The end of a stream its owner stopped: a closing line, then the turn as far as it got
    is stored and its tokens (as estimated, Llama Stack reported none) are charged."""
    suffix = close_markdown(text) + f"\n\n*{INTERRUPTED_TEXT}*"
    result.response = plan.shields.redact(text)
    result.llm_seconds = waiting
    await estimate_missing_usage(plan, result)
    result.response = plan.shields.redact(text + suffix)
    add_inline_hits(result, plan)
    add_check(result, verdict)
    yield StreamEvent("token", {"id": token_no, "token": suffix})
    await finish(runtime, plan, result)
    yield StreamEvent("interrupted", {"request_id": live.request_id})


async def _refused_stream(runtime: Runtime, plan: QueryPlan, verdict: validity.Verdict,
                          start: StreamEvent) -> AsyncIterator[StreamEvent]:
    """A refused question's stream: its fixed answer as the one token, then as the turn."""
    result = refusal(verdict)
    yield start
    yield StreamEvent("token", {"id": 0, "token": result.response})
    yield StreamEvent("turn_complete", {"token": result.response})
    quotas = await finish(runtime, plan, result)
    yield _end_event(plan, result, quotas)


def _end_event(plan: QueryPlan, result: QueryResult, quotas: dict[str, int]) -> StreamEvent:
    stats = current_request()
    # The request's whole time minus every Llama Stack wait; the middleware records the same figure.
    overhead_ms = (stats.freeze_overhead() if stats is not None else
                   max(time.perf_counter() - plan.started - result.llm_seconds, 0.0)) * 1000
    return StreamEvent("end", {
        "referenced_documents": result.referenced_documents, "rag_chunks": result.rag_chunks,
        "truncated": False, "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens, "tokens_estimated": result.tokens_estimated,
        "available_quotas": quotas, "overhead_ms": round(overhead_ms, 2)})


async def _close_quietly(upstream: Any) -> None:
    close = getattr(upstream, "close", None)
    if close is not None:
        # Closing a dead stream must not mask the real outcome.
        with contextlib.suppress(Exception):
            await close()


def response_body(plan: QueryPlan, result: QueryResult, quotas: dict[str, int]) -> dict[str, Any]:
    return {
        "conversation_id": plan.conversation_id, "response": result.response,
        "rag_chunks": result.rag_chunks, "referenced_documents": result.referenced_documents,
        "truncated": False, "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens, "tokens_estimated": result.tokens_estimated,
        "available_quotas": quotas,
        "tool_calls": result.tool_calls, "tool_results": result.tool_results,
    }
