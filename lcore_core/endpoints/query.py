"""`/v2/query` and `/v2/streaming_query`, with upstream's `/v1/...` paths and old aliases."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from marshmallow import Schema, ValidationError, fields
from quart import Blueprint, Response, current_app, g, jsonify, request

from lcore_core import pipeline
from lcore_core.auth import Action, authorize
from lcore_core.config.schema import Base
from lcore_core.errors import Forbidden, LCoreError, NotFound
from lcore_core.interrupts import Outcome
from lcore_core.mcp import MCP_HEADERS, parse_mcp_headers
from lcore_core.schemas import QueryRequestSchema, QueryResponseSchema
from lcore_core.web import doc, load_body, route

bp = Blueprint("query", __name__)
MCP_UNAVAILABLE = "X-LCore-MCP-Unavailable"
log = structlog.get_logger("lcore.query")


def _runtime() -> Any:
    return current_app.runtime  # type: ignore[attr-defined]


async def _plan(endpoint: str) -> pipeline.QueryPlan:
    runtime = _runtime()
    body = await load_body(QueryRequestSchema)
    client_headers = parse_mcp_headers(request.headers.get(MCP_HEADERS),
                                       runtime.mcp_servers())
    pipeline.check_attachments(body.get("attachments") or [])
    plan = await pipeline.prepare(runtime, g.auth, body, endpoint=endpoint,
                                  client_mcp_headers=client_headers,
                                  request_headers=dict(request.headers))
    plan.transcript = True
    return plan


@route(bp, "/v2/query", "/v1/query", methods=["POST"], deprecated_aliases=["/query"])
@doc(summary="Ask a question; the answer comes back as one JSON document", tags=["query"],
     body=QueryRequestSchema, responses={200: QueryResponseSchema, 404: "Unknown model or "
                                         "conversation", 429: "Quota exceeded",
                                         503: "Llama Stack unavailable"})
@authorize(Action.QUERY)
async def query() -> Any:
    runtime = _runtime()
    plan = await _plan("/v2/query")
    result = await pipeline.run(runtime, plan)
    quotas = await pipeline.finish(runtime, plan, result)
    return _note_unavailable(jsonify(pipeline.response_body(plan, result, quotas)), plan)


def _note_unavailable(response: Response, plan: pipeline.QueryPlan) -> Response:
    """Name the MCP servers the answer had to do without (they did not answer)."""
    if plan.mcp_unavailable:
        response.headers[MCP_UNAVAILABLE] = ", ".join(plan.mcp_unavailable)
    return response


@route(bp, "/v2/streaming_query", "/v1/streaming_query", methods=["POST"],
       deprecated_aliases=["/streaming_query"])
@doc(summary="Ask a question; the answer streams as server-sent events", tags=["query"],
     body=QueryRequestSchema, content_type="text/event-stream",
     responses={200: "SSE stream: start, token..., tool_call, tool_result, turn_complete, end "
                     "(or error; a stream stopped through /v1/streaming_query/interrupt ends "
                     "with a closing token and interrupted)",
                404: "Unknown model or conversation", 429: "Quota exceeded",
                503: "Llama Stack unavailable"})
@authorize(Action.STREAMING_QUERY)
async def streaming_query() -> Any:
    runtime = _runtime()
    plan = await _plan("/v2/streaming_query")
    g.streaming = True
    text_mode = plan.media_type == "text/plain"

    stream = pipeline.stream(runtime, plan, raise_on_open=True)
    # Wait for Llama Stack to accept the call: if it does not, answer with a plain HTTP error.
    first = await anext(stream)

    async def events() -> AsyncIterator[bytes]:
        try:
            yield _encode(first, text_mode)
            async for event in stream:
                if runtime.cutting_streams:
                    # Shutdown's grace period is over: end here (the stream's own clean-up
                    # releases the quota reservation and stores nothing).
                    await stream.aclose()
                    yield _encode(pipeline.StreamEvent("error", {
                        "status_code": 503, "response": "Service shutting down",
                        "cause": "the answer was cut at the end of the shutdown grace period"}),
                        text_mode)
                    return
                yield _encode(event, text_mode)
        except LCoreError as exc:
            yield _encode(pipeline.StreamEvent("error", {
                "status_code": exc.status, "response": exc.response, "cause": exc.cause}),
                text_mode)
        except Exception as exc:  # headers are sent: report in-band, never a traceback
            log.exception("stream failed")
            yield _encode(pipeline.StreamEvent("error", {
                "status_code": 500, "response": "Internal server error",
                "cause": type(exc).__name__}), text_mode)

    response = Response(events(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return _note_unavailable(response, plan)


def _request_id(value: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValidationError(f"Improper request ID {value[:64]}") from None


class StreamingInterruptRequestSchema(Base):
    request_id = fields.String(required=True, validate=_request_id, metadata={
        "description": "The request_id of the stream's start event",
        "example": "123e4567-e89b-12d3-a456-426614174000"})


class StreamingInterruptResponseSchema(Schema):
    request_id = fields.String(required=True)
    interrupted = fields.Boolean(required=True)
    message = fields.String(required=True)


@route(bp, "/v1/streaming_query/interrupt", methods=["POST"])
@doc(summary="Stop one of the caller's streaming queries; what it said so far is kept",
     tags=["query"], body=StreamingInterruptRequestSchema,
     responses={200: StreamingInterruptResponseSchema,
                403: "The stream is another user's", 404: "No live stream of that id"})
@authorize(Action.STREAMING_QUERY)
async def interrupt_stream() -> Any:
    request_id = (await load_body(StreamingInterruptRequestSchema))["request_id"]
    user_id = g.auth.user_id
    outcome = _runtime().streams.interrupt(request_id, user_id)
    if outcome is Outcome.NOT_FOUND:
        raise NotFound("Streaming Request not found",
                       f"Streaming Request with ID {request_id} does not exist")
    if outcome is Outcome.FORBIDDEN:
        raise Forbidden("User does not have permission to interrupt this streaming request",
                        f"User {user_id} does not own streaming request with ID {request_id}")
    if outcome is Outcome.ALREADY_DONE:
        return jsonify({"request_id": request_id, "interrupted": False,
                        "message": "Streaming request already completed; nothing to interrupt"})
    log.info("stream interrupted", stream_request_id=request_id)
    return jsonify({"request_id": request_id, "interrupted": True,
                    "message": "Streaming request interrupted"})


def _encode(event: pipeline.StreamEvent, text_mode: bool) -> bytes:
    if text_mode:
        if event.event == "token":
            return event.data["token"].encode()
        if event.event == "error":
            return f"\n\n[error] {event.data['response']}: {event.data['cause']}\n".encode()
        if event.event == "end":
            docs = event.data.get("referenced_documents") or []
            if docs:
                lines = "\n".join(f"- {d.get('doc_title')}: {d.get('doc_url')}" for d in docs)
                return f"\n\n---\nReferenced documents:\n{lines}\n".encode()
        return b""
    body: dict[str, Any] = {"event": event.event, "data": event.data}
    if event.event == "end":
        # where upstream puts it: beside `data` (LCore also keeps it inside, for its clients)
        body["available_quotas"] = event.data.get("available_quotas") or {}
    payload = json.dumps(body, default=str)
    return f"data: {payload}\n\n".encode()
