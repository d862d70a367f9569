"""Routes: the agent card and the A2A JSON-RPC endpoint."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import structlog
from a2a.types import InternalError
from pydantic import BaseModel
from quart import Blueprint, Response, current_app, g, jsonify, request

from lcore_a2a import jsonrpc
from lcore_a2a.agent import SEND_ENDPOINT, STREAM_ENDPOINT, A2AService
from lcore_a2a.card import AgentCardSchema, build_card
from lcore_a2a.jsonrpc import Call, RpcError, RpcId
from lcore_core import LCoreError, authorize, doc, route
from lcore_core import __version__ as lcore_version

# The MCP-HEADERS parsing /v2/query uses.
from lcore_core.api import MCP_HEADERS, parse_mcp_headers

STATE_KEY = "lcore-a2a"
A2A_AGENT_CARD = "a2a_agent_card"
A2A_JSONRPC = "a2a_jsonrpc"
# Upstream's other A2A action names, accepted in access rules so upstream files load unchanged.
A2A_TASK_EXECUTION = "a2a_task_execution"
A2A_MESSAGE = "a2a_message"
ACTIONS = (A2A_AGENT_CARD, A2A_JSONRPC, A2A_TASK_EXECUTION, A2A_MESSAGE)

log = structlog.get_logger("lcore.a2a")


def _runtime() -> Any:
    return current_app.runtime  # type: ignore[attr-defined]


def service() -> A2AService:
    return _runtime().state[STATE_KEY]  # type: ignore[no-any-return]


def blueprint() -> Blueprint:
    bp = Blueprint("a2a", __name__)

    @route(bp, "/.well-known/agent-card.json", "/.well-known/agent.json", "/a2a")
    @doc(summary="The A2A agent card of this service", tags=["a2a"],
         responses={200: AgentCardSchema})
    @authorize(A2A_AGENT_CARD)
    async def agent_card() -> Any:
        root = request.host_url.rstrip("/") + request.root_path
        card = build_card(_runtime().config, root)
        return jsonify(card.model_dump(mode="json", exclude_none=True))

    @route(bp, "/a2a", methods=["POST"])
    @doc(summary="A2A JSON-RPC 2.0: message/send, message/stream (SSE), tasks/get, "
                 "tasks/cancel", tags=["a2a"],
         responses={200: "A JSON-RPC response (errors too), or for message/stream an SSE "
                         "stream of JSON-RPC responses"})
    @authorize(A2A_JSONRPC)
    async def a2a_jsonrpc() -> Any:
        try:
            raw = await request.get_data(as_text=False)
            call = jsonrpc.parse(raw if isinstance(raw, bytes) else raw.encode())
        except RpcError as exc:
            return _answer(jsonrpc.error(exc.rpc_id, exc.error))
        try:
            return await _dispatch(call)
        except RpcError as exc:
            return _answer(jsonrpc.error(call.id, exc.error))
        except LCoreError as exc:
            return _answer(jsonrpc.error(call.id, _internal(exc)))
        except Exception as exc:  # never a traceback to the client
            log.exception("a2a call failed", method=call.method)
            return _answer(jsonrpc.error(call.id, _internal(exc)))

    @route(bp, "/a2a/health")
    @doc(summary="Whether the A2A service answers (public, as upstream's)", tags=["a2a"],
         responses={200: "status, service, version, a2a_sdk_version, timestamp"})
    async def a2a_health() -> Any:
        return jsonify({"status": "healthy", "service": "lightspeed-a2a",
                        "version": lcore_version, "a2a_sdk_version": _sdk_version(),
                        "timestamp": datetime.now(UTC).isoformat()})

    return bp


def _sdk_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("a2a-sdk")
    except PackageNotFoundError:
        return "unknown"


async def _dispatch(call: Call) -> Any:
    a2a = service()
    params = call.request.params
    if call.method == jsonrpc.GET_TASK:
        return _answer(jsonrpc.result(call.id, await a2a.get(g.auth, params.id,
                                                             params.history_length)))
    if call.method == jsonrpc.CANCEL_TASK:
        return _answer(jsonrpc.result(call.id, await a2a.cancel(g.auth, params.id)))
    streaming = call.method == jsonrpc.STREAM
    turn = await a2a.begin(g.auth, params)
    try:
        runtime = _runtime()
        await a2a.prepare(
            turn, endpoint=STREAM_ENDPOINT if streaming else SEND_ENDPOINT,
            client_mcp_headers=parse_mcp_headers(request.headers.get(MCP_HEADERS),
                                                 runtime.mcp_servers()),
            request_headers=dict(request.headers))
    except LCoreError as exc:  # quota, model, conversation, Llama Stack: the task fails
        task = await a2a.failed(turn, exc)
        if not streaming:
            return _answer(jsonrpc.result(call.id, task))
        return _sse(call.id, a2a.failed_stream(turn, task))
    if not streaming:
        task = await a2a.send(turn)
        g.llm_seconds = turn.llm_seconds
        return _answer(jsonrpc.result(call.id, task))
    g.streaming = True
    return _sse(call.id, a2a.stream(turn))


def _sse(rpc_id: RpcId, events: AsyncIterator[BaseModel]) -> Response:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield _data(jsonrpc.result(rpc_id, event))
        except Exception as exc:  # headers are sent: report in-band, never a traceback
            log.exception("a2a stream failed")
            yield _data(jsonrpc.error(rpc_id, _internal(exc)))

    response = Response(body(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response


def _data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def _answer(payload: dict[str, Any]) -> Any:
    return jsonify(payload)


def _internal(exc: BaseException) -> InternalError:
    if isinstance(exc, LCoreError):
        return InternalError(message=exc.response, data={"status_code": exc.status,
                                                         "cause": exc.cause})
    return InternalError(data=f"unexpected {type(exc).__name__}; see the service log "
                              f"(request id {getattr(g, 'request_id', '?')})")
