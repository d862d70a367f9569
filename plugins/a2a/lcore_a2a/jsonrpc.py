"""JSON-RPC 2.0 envelopes for A2A 0.3: parsing a request and shaping results and errors.

Every answer is JSON (HTTP 200, as a2a-sdk's clients expect), never an HTML page or a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from a2a.types import (
    A2AError,
    AuthenticatedExtendedCardNotConfiguredError,
    CancelTaskRequest,
    GetTaskRequest,
    InvalidParamsError,
    InvalidRequestError,
    JSONParseError,
    MethodNotFoundError,
    PushNotificationNotSupportedError,
    SendMessageRequest,
    SendStreamingMessageRequest,
    UnsupportedOperationError,
)
from pydantic import BaseModel, ValidationError

from lcore_core import load_json

SEND = "message/send"
STREAM = "message/stream"
GET_TASK = "tasks/get"
CANCEL_TASK = "tasks/cancel"
METHODS: dict[str, type[BaseModel]] = {
    SEND: SendMessageRequest, STREAM: SendStreamingMessageRequest,
    GET_TASK: GetTaskRequest, CANCEL_TASK: CancelTaskRequest,
}
# A2A 0.3 methods LCore knows but does not offer: a precise error rather than "not found".
PUSH_METHODS = ("tasks/pushNotificationConfig/set", "tasks/pushNotificationConfig/get",
                "tasks/pushNotificationConfig/list", "tasks/pushNotificationConfig/delete")
UNSUPPORTED = ("tasks/resubscribe",)
EXTENDED_CARD = "agent/getAuthenticatedExtendedCard"

RpcId = str | int | None  # None only when the request's own id is unusable


class RpcError(Exception):
    """Answer the call with this A2A/JSON-RPC error object."""

    def __init__(self, error: Any, rpc_id: RpcId = None) -> None:
        super().__init__(getattr(error, "message", None) or type(error).__name__)
        self.error = error
        self.rpc_id = rpc_id


@dataclass(frozen=True)
class Call:
    """A valid request: its id, method and the a2a-sdk request model (`.params` typed)."""

    id: RpcId
    method: str
    request: Any


def parse(raw: bytes) -> Call:
    """Validate one JSON-RPC request for a method LCore offers; raise `RpcError` otherwise."""
    try:
        body = load_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RpcError(JSONParseError(data=str(exc))) from None
    if isinstance(body, list):
        raise RpcError(InvalidRequestError(message="Batch requests are not supported"))
    if not isinstance(body, dict):
        raise RpcError(InvalidRequestError(data="the request must be a JSON object"))
    rpc_id = body.get("id")
    if isinstance(rpc_id, bool) or not isinstance(rpc_id, str | int):
        # A2A has no notifications: every call is answered, so it needs an id.
        raise RpcError(InvalidRequestError(data="id must be a string or a number"))
    if body.get("jsonrpc") != "2.0":
        raise RpcError(InvalidRequestError(data='jsonrpc must be "2.0"'), rpc_id)
    method = body.get("method")
    if not isinstance(method, str):
        raise RpcError(InvalidRequestError(data="method must be a string"), rpc_id)
    model = METHODS.get(method)
    if model is None:
        raise RpcError(_unknown(method), rpc_id)
    if not isinstance(body.get("params"), dict):
        raise RpcError(InvalidParamsError(data="params must be an object"), rpc_id)
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        raise RpcError(InvalidParamsError(data=describe(exc)), rpc_id) from None
    return Call(rpc_id, method, request)


def _unknown(method: str) -> Any:
    if method in PUSH_METHODS:
        return PushNotificationNotSupportedError()
    if method in UNSUPPORTED:
        return UnsupportedOperationError(data=f"{method} is not supported")
    if method == EXTENDED_CARD:
        return AuthenticatedExtendedCardNotConfiguredError()
    return MethodNotFoundError(data=f"unknown method {method!r}; offered: "
                                    f"{', '.join(METHODS)}")


def describe(exc: ValidationError) -> str:
    """pydantic's errors as `path: message; ...` (the input values are left out)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'params'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False))


def result(rpc_id: RpcId, value: BaseModel) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id,
            "result": value.model_dump(mode="json", exclude_none=True)}


def error(rpc_id: RpcId, err: Any) -> dict[str, Any]:
    if isinstance(err, A2AError):
        err = err.root
    return {"jsonrpc": "2.0", "id": rpc_id,
            "error": err.model_dump(mode="json", exclude_none=True)}
