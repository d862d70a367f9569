"""`POST /v1/responses`: OpenAI's Responses API, through LCore's query pipeline.

The body and the answer are OpenAI's (the `openai` SDK talks to it unchanged), with upstream's
additions: the answer names its LCore `conversation` and carries `available_quotas` and
`output_text`. Around the one Llama Stack call sits what `/v2/query` has: authentication, the
`responses` action, quota (checked before, the exact usage consumed after, nothing on failure),
shields, MCP tools, RAG, the user DB and cache (the turn shows in `/v2/conversations`), metrics.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from quart import Blueprint, Response, current_app, g, jsonify, request

from lcore_core import pipeline, rag, skills
from lcore_core.auth import Action, AuthTuple, authorize, may
from lcore_core.errors import LCoreError, NotFound, PayloadTooLarge, UnprocessableEntity
from lcore_core.events import QuotaTicket
from lcore_core.mcp import MCP_HEADERS, mcp_tools, parse_mcp_headers
from lcore_core.schemas import (
    RESPONSES_MAX_BODY,
    ResponsesRequestSchema,
    ResponsesResponseSchema,
    conversation_key,
)
from lcore_core.web import doc, load_body, route

bp = Blueprint("responses", __name__)
log = structlog.get_logger("lcore.responses")

ENDPOINT = "/v1/responses"
# What the answer shows as `instructions` when the server's system prompt was used (upstream's).
SERVER_PROMPT = "<server prompt applied>"
# Output items of MCP servers; those of configured servers are LCore's business, not the client's.
MCP_ITEMS = ("mcp_call", "mcp_list_tools", "mcp_approval_request")
MCP_EVENTS = ("response.mcp_call.", "response.mcp_list_tools.", "response.mcp_approval_request.")
# Responses arguments passed to Llama Stack as the client gave them.
_PASSED = ("include", "max_output_tokens", "metadata", "parallel_tool_calls", "prompt",
           "temperature", "text")


def _runtime() -> Any:
    return current_app.runtime  # type: ignore[attr-defined]


@route(bp, ENDPOINT, methods=["POST"])
@doc(summary="OpenAI-compatible Responses API; `stream: true` answers with OpenAI's "
             "server-sent events", tags=["responses"], body=ResponsesRequestSchema,
     content_type=("application/json", "text/event-stream"),
     responses={200: ResponsesResponseSchema, 404: "Unknown model, conversation or response",
                413: "Request body too large", 429: "Quota exceeded",
                503: "Llama Stack unavailable"})
@authorize(Action.RESPONSES)
async def responses() -> Any:
    runtime = _runtime()
    size = len(await request.get_data())
    if size > RESPONSES_MAX_BODY:
        raise PayloadTooLarge("Request too large", f"the body has {size} bytes; at most "
                                                   f"{RESPONSES_MAX_BODY} are accepted")
    body = await load_body(ResponsesRequestSchema)
    custom = runtime.config.get("customization") or {}
    if body.get("instructions") and custom.get("disable_query_system_prompt"):
        raise UnprocessableEntity(
            "System prompt customization is disabled",
            "this instance does not let requests set the system prompt "
            "(customization.disable_query_system_prompt); remove `instructions`")
    if body.get("reasoning") is not None:
        log.info("reasoning is not supported and is ignored")
    client_headers = parse_mcp_headers(request.headers.get(MCP_HEADERS),
                                       runtime.mcp_servers())
    plan = await prepare(runtime, g.auth, body, client_headers, dict(request.headers))
    if body["stream"]:
        return await _streamed(runtime, plan, body)
    result = await pipeline.run(runtime, plan)
    quotas = await pipeline.finish(runtime, plan, result)
    raw = result.raw or refused_response(plan, result.response, result.input_tokens,
                                         result.output_tokens)
    return jsonify(shape(raw, plan, body, quotas, completed=True))


def refused_response(plan: pipeline.QueryPlan, text: str, input_tokens: int,
                     output_tokens: int) -> dict[str, Any]:
    """The response object of a question a question_validity shield refused (no Responses
    call was made): one assistant message with the shield's fixed answer."""
    return {"id": "modr_" + secrets.token_hex(24), "object": "response",
            "created_at": int(time.time()), "status": "completed", "model": plan.model_id,
            "output": [{"id": "msg_" + secrets.token_hex(24), "type": "message",
                        "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text,
                                     "annotations": []}]}],
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                      "total_tokens": input_tokens + output_tokens},
            "tools": [], "parallel_tool_calls": True, "store": plan.store}


# --- preparation ---------------------------------------------------------------------------


def input_text(value: str | list[dict[str, Any]]) -> str:
    """The user's words in `input` (for the quota check, inline RAG, the topic and the cache)."""
    if isinstance(value, str):
        return value
    texts = []
    for item in value:
        if item.get("type", "message") == "message" and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(str(part.get("text") or "") for part in content
                             if isinstance(part, dict) and part.get("type") == "input_text")
    return "\n".join(t for t in texts if t)


def _redacted(value: str | list[dict[str, Any]], shields: Any) -> Any:
    """`input` with the configured redaction applied to the user's words."""
    if isinstance(value, str):
        return shields.redact(value)
    items = copy.deepcopy(value)
    for item in items:
        content = item.get("content")
        if isinstance(content, str):
            item["content"] = shields.redact(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part["text"] = shields.redact(part["text"])
    return items


def _with_context(value: str | list[dict[str, Any]], context: str) -> Any:
    """`input` with the inline RAG context added to the user's words, as upstream does: to the
    string, or to the first user message's text."""
    if not context:
        return value
    if isinstance(value, str):
        return value + context
    items = copy.deepcopy(value)
    for item in items:
        if item.get("type", "message") != "message" or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            item["content"] = content + context
            return items
        for part in content or []:
            if isinstance(part, dict) and part.get("type") == "input_text":
                part["text"] = str(part.get("text") or "") + context
                return items
    return value


async def prepare(runtime: Any, auth: AuthTuple, body: dict[str, Any],
                  client_headers: dict[str, Any],
                  request_headers: dict[str, str]) -> pipeline.QueryPlan:
    """The pipeline's plan for a Responses request (quota checked, reservation held)."""
    text = input_text(body["input"])
    # As the client wrote it (a 404 names it so); looked up in LCore's form.
    conversation = body.get("conversation")
    previous = body.get("previous_response_id")
    lookup = None
    if conversation:
        lookup = runtime.userdb.get(conversation_key(conversation))
    elif previous:
        anyone = may(auth, Action.QUERY_OTHERS_CONVERSATIONS)
        lookup = runtime.userdb.find_response(previous, None if anyone else auth.user_id)

    async def decide(ticket: QuotaTicket, meta: Any) -> pipeline.QueryPlan:
        return await _decide(runtime, auth, body, text, conversation, previous, meta, ticket,
                             client_headers, request_headers)

    return await pipeline.reserve(runtime, auth, QuotaTicket(query=text, endpoint=ENDPOINT),
                                  lookup, decide)


async def _decide(runtime: Any, auth: AuthTuple, body: dict[str, Any], text: str,
                  conversation_id: str | None, previous: str | None, meta: Any,
                  ticket: QuotaTicket, client_headers: dict[str, Any],
                  request_headers: dict[str, str]) -> pipeline.QueryPlan:
    # Before the conversation: a refused shield_ids must not take a pooled conversation.
    shields, guardrails = await pipeline.choose_shields(runtime, auth, body.get("shield_ids"))
    conversation = await _conversation(runtime, auth, conversation_id, previous, meta)
    preferred = None
    if isinstance(meta, dict) and meta.get("last_used_model") and meta.get("last_used_provider"):
        # A continued conversation keeps its model unless the request names one (upstream).
        preferred = (meta["last_used_model"], meta["last_used_provider"])
    model_id, provider, model = await pipeline.select_model(
        runtime, auth, _model_fields(body.get("model")), preferred=preferred)
    unavailable: list[str] = []
    none = body.get("tool_choice") == "none"
    if runtime.mcp_health is not None and not none:
        unavailable = await runtime.mcp_health.unreachable(runtime.mcp_servers())
    tools = [] if none else await _tools(runtime, auth, body.get("tools"), client_headers,
                                         request_headers, frozenset(unavailable))
    requested_stores = None
    if body.get("tools") is not None:
        # Inline RAG searches only the stores the request offers (upstream's rule).
        requested_stores = [s for t in body["tools"] if t["type"] == "file_search"
                            for s in t.get("vector_store_ids") or []]
    # Redaction covers what the turn sends on and what LCore stores (as for /v2/query).
    text = shields.redact(text)
    hits = await rag.retrieve(runtime, text, requested_stores)
    inference = runtime.config.inference
    args = {k: body[k] for k in _PASSED if body.get(k) is not None}
    args["max_infer_iters"] = body.get("max_infer_iters") or inference.max_infer_iters
    args["max_tool_calls"] = body.get("max_tool_calls") or inference.max_tool_calls
    args = {k: v for k, v in args.items() if v is not None}
    if tools and body.get("tool_choice") is not None:
        args["tool_choice"] = body["tool_choice"]
    summary = body.get("generate_topic_summary") is not False and conversation.new
    return pipeline.QueryPlan(
        ticket=ticket, mcp_unavailable=unavailable, inline_hits=hits, auth=auth, query=text,
        conversation_id=conversation.id, new_conversation=conversation.new,
        chained=conversation.chained, previous_response_id=conversation.previous_response_id,
        model_id=model_id, provider=provider, model=model,
        instructions=pipeline.system_prompt(runtime, body.get("instructions"))
        + skills.instructions_for(runtime, tools),
        tools=tools, guardrails=guardrails, shields=shields,
        input=_with_context(_redacted(body["input"], shields), shields.redact(rag.context(hits))),
        generate_topic_summary=summary, media_type="application/json", endpoint=ENDPOINT,
        args=args, store=body["store"], transcript=body["store"])


async def _conversation(runtime: Any, auth: AuthTuple, conversation_id: str | None,
                        previous: str | None, meta: Any) -> pipeline.Conversation:
    """`conversation` continues that conversation; `previous_response_id` continues the
    conversation whose last response it is, or forks a new one from an earlier response;
    neither starts a new conversation."""
    if conversation_id or not previous:
        return await pipeline.resolve_conversation(runtime, auth, conversation_id, meta)
    if meta is None:
        raise NotFound.of("Response", previous)
    if meta["response_ids"][-1] == previous:
        return pipeline.Conversation(meta["conversation_id"], False, True, previous)
    return pipeline.Conversation(pipeline.new_conversation_id(), True, True, previous)


def _model_fields(model: str | None) -> dict[str, Any]:
    """`provider/model` as the pipeline's model and provider fields."""
    if not model:
        return {}
    provider, _, name = model.partition("/")
    return {"model": name or provider, "provider": provider if name else None}


async def _tools(runtime: Any, auth: AuthTuple, requested: list[dict[str, Any]] | None,
                 client_headers: dict[str, Any], request_headers: dict[str, str],
                 skip: frozenset[str]) -> list[dict[str, Any]]:
    """No `tools`: what LCore offers every query (file_search over the configured stores and
    the configured MCP servers). Listed `tools`: those, a configured MCP server with its
    configured URL and resolved headers; an MCP server LCore does not know is refused (LCore
    does not let clients point Llama Stack at URLs of their choosing)."""
    if requested is None:
        return await pipeline.select_tools(runtime, auth, None, client_headers,
                                           request_headers, skip)
    names = [s.name for s in runtime.mcp_servers()]
    resolved = {t["server_label"]: t
                for t in mcp_tools(runtime, auth, client_headers, request_headers, skip)}
    tools = []
    for tool in requested:
        if tool["type"] == "file_search" and tool.get("vector_store_ids"):
            # A rag_id names its vector store, as upstream translates it.
            tool = {**tool, "vector_store_ids": rag.to_store_ids(runtime.config,
                                                                 tool["vector_store_ids"])}
        if tool["type"] != "mcp":
            tools.append(tool)
            continue
        label = tool.get("server_label")
        if label not in names:
            raise UnprocessableEntity(
                "Invalid request", f"tools: MCP server {label!r} is not configured "
                                   f"(configured: {', '.join(names) or 'none'})")
        if label in resolved:  # else unreachable, or the client sent no headers for it
            chosen = {**resolved[label]}
            if tool.get("allowed_tools") is not None:
                chosen["allowed_tools"] = tool["allowed_tools"]
            tools.append(chosen)
    return tools


# --- the answer ----------------------------------------------------------------------------


def output_text(output: list[dict[str, Any]]) -> str:
    return "".join(pipeline.message_text(item)[0] for item in output
                   if isinstance(item, dict) and item.get("type") == "message")


def shape(data: dict[str, Any], plan: pipeline.QueryPlan, body: dict[str, Any],
          quotas: dict[str, int], *, completed: bool) -> dict[str, Any]:
    """Llama Stack's response object as the client sees it: LCore's own details (its system
    prompt, its MCP servers: every MCP server a call offers is a configured one) left out,
    upstream's fields added."""
    out = dict(data)
    if body.get("instructions") is None:
        out["instructions"] = SERVER_PROMPT
    if out.get("tools"):
        out["tools"] = [t for t in out["tools"] if t.get("type") != "mcp"]
    out["output"] = [item for item in out.get("output") or []
                     if item.get("type") not in MCP_ITEMS]
    if body.get("model") is None and "/" in str(out.get("model") or ""):
        out["model"] = str(out["model"]).rsplit("/", 1)[-1]
    for key in ResponsesResponseSchema.OPTIONAL:  # present, null when Llama Stack left it out
        out.setdefault(key, None)
    out["conversation"] = plan.conversation_id
    out["safety_identifier"] = body.get("safety_identifier")
    out["available_quotas"] = quotas
    out["output_text"] = output_text(out["output"]) if completed else ""
    if completed:
        out["completed_at"] = int(time.time())
    return out


async def _streamed(runtime: Any, plan: pipeline.QueryPlan, body: dict[str, Any]) -> Response:
    plan.forward = True
    g.streaming = True
    stream = pipeline.stream(runtime, plan, raise_on_open=True)
    # Wait for Llama Stack to accept the call: if it does not, answer with a plain HTTP error.
    await anext(stream)

    async def events() -> AsyncIterator[bytes]:
        number = 0
        visible = _Visible()
        final: dict[str, Any] | None = None  # response.completed waits for the quota
        answer = ""

        def sse(data: dict[str, Any]) -> bytes:
            nonlocal number
            data = {**data, "sequence_number": number}
            number += 1
            return f"event: {data['type']}\ndata: {json.dumps(data, default=str)}\n\n".encode()

        def failure(status: int, response: str, cause: str) -> bytes:
            return sse({"type": "error", "code": str(status), "message": f"{response}: {cause}",
                        "param": None})

        try:
            async for event in stream:
                if runtime.cutting_streams:
                    # Shutdown's grace period is over: end here (the stream's clean-up
                    # releases the quota reservation and stores nothing).
                    await stream.aclose()
                    yield failure(503, "Service shutting down", "the answer was cut at the end "
                                  "of the shutdown grace period")
                    break
                if event.event == "error":
                    yield failure(event.data["status_code"], event.data["response"],
                                  event.data["cause"])
                    break
                if event.event == "turn_complete":
                    answer = event.data.get("token") or ""
                if event.event == "end" and final is None:
                    # Refused by a question_validity shield: no Llama Stack events to pass
                    # on; the refusal told the way a stream tells an answer.
                    raw = refused_response(plan, answer, event.data["input_tokens"],
                                           event.data["output_tokens"])
                    item = raw["output"][0]
                    started = {**raw, "status": "in_progress", "output": []}
                    yield sse({"type": "response.created",
                               "response": shape(started, plan, body, {}, completed=False)})
                    for kind in ("response.output_item.added", "response.output_item.done"):
                        yield sse({"type": kind, "response_id": raw["id"], "output_index": 0,
                                   "item": item})
                    final = {"type": "response.completed",
                             "response": shape(raw, plan, body, {}, completed=True)}
                if event.event == "end" and final is not None:
                    final["response"]["available_quotas"] = event.data["available_quotas"]
                    yield sse(final)
                    continue
                if event.event != "upstream":
                    continue
                data = visible(event.data)
                if data is None:
                    continue
                kind = data.get("type", "")
                if isinstance(data.get("response"), dict):
                    done = kind in ("response.completed", "response.incomplete")
                    data["response"] = shape(data["response"], plan, body, {},
                                             completed=done)
                    if done:
                        final = data
                        continue
                yield sse(data)
        except LCoreError as exc:
            yield failure(exc.status, exc.response, exc.cause)
        except Exception as exc:  # headers are sent: report in-band, never a traceback
            log.exception("stream failed")
            yield failure(500, "Internal server error", type(exc).__name__)
        finally:
            # A client gone mid-stream closes this generator: close the pipeline's now, so
            # the Llama Stack stream ends and the reservation is released at once.
            await stream.aclose()
        yield b"data: [DONE]\n\n"

    response = Response(events(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response


class _Visible:
    """Which stream events the client sees, and their `output_index` as the client counts.

    Every MCP server a call offers is a configured one (LCore refuses others), so every MCP
    item and event is LCore's business: left out, as upstream leaves out its servers' items.
    Llama Stack 0.7 sends some MCP events without an `output_index`, so they are recognised
    by type. The items left are renumbered from 0, as in the final response's `output`, so
    that clients which build the response from the events (the SDK's `responses.stream`)
    find each item where the events say.
    """

    def __init__(self) -> None:
        self.shown: dict[int, int] = {}
        self.hidden: set[int] = set()

    def __call__(self, data: dict[str, Any]) -> dict[str, Any] | None:
        kind = str(data.get("type") or "")
        if kind.startswith(MCP_EVENTS):
            return None
        index = data.get("output_index")
        if not isinstance(index, int):
            return data
        if kind == "response.output_item.added":
            if (data.get("item") or {}).get("type") in MCP_ITEMS:
                self.hidden.add(index)
            else:
                self.shown.setdefault(index, len(self.shown))
        if index in self.hidden:
            return None
        return {**data, "output_index": self.shown.get(index, index)}
