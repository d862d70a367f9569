"""Conversations: list, history, delete, topic summary update (all three path prefixes)."""

from __future__ import annotations

import re
from typing import Any

import structlog
from marshmallow import Schema, fields, validate
from quart import Blueprint, current_app, g, jsonify

from lcore_core.auth import Action, AuthTuple, authorize, may
from lcore_core.errors import BadRequest, NotFound
from lcore_core.llama import llama_errors
from lcore_core.schemas import CONVERSATION_ID_PATTERN
from lcore_core.web import doc, load_body, route

bp = Blueprint("conversations", __name__)
log = structlog.get_logger("lcore.conversations")
_ID = re.compile(CONVERSATION_ID_PATTERN)


class ConversationSummarySchema(Schema):
    conversation_id = fields.String(required=True)
    created_at = fields.String()
    last_message_at = fields.String()
    last_message_timestamp = fields.String()
    message_count = fields.Integer()
    last_used_model = fields.String()
    last_used_provider = fields.String()
    topic_summary = fields.String(allow_none=True)


class ConversationListSchema(Schema):
    conversations = fields.List(fields.Nested(ConversationSummarySchema), required=True)


class MessageSchema(Schema):
    content = fields.String(required=True)
    type = fields.String(required=True)


class TurnSchema(Schema):
    messages = fields.List(fields.Nested(MessageSchema), required=True)
    started_at = fields.String(allow_none=True)
    completed_at = fields.String(allow_none=True)
    provider = fields.String(allow_none=True)
    model = fields.String(allow_none=True)
    referenced_documents = fields.List(fields.Dict())
    tool_calls = fields.List(fields.Dict())
    tool_results = fields.List(fields.Dict())


class ConversationSchema(Schema):
    conversation_id = fields.String(required=True)
    chat_history = fields.List(fields.Nested(TurnSchema), required=True)


class DeleteSchema(Schema):
    conversation_id = fields.String(required=True)
    success = fields.Boolean(required=True)
    response = fields.String(required=True)


class UpdateRequestSchema(Schema):
    topic_summary = fields.String(required=True, validate=validate.Length(1, 1000))


class UpdateSchema(Schema):
    conversation_id = fields.String(required=True)
    success = fields.Boolean(required=True)
    message = fields.String(required=True)


def _runtime() -> Any:
    return current_app.runtime  # type: ignore[attr-defined]


def _check_id(conversation_id: str) -> None:
    if not _ID.match(conversation_id):
        raise BadRequest("Invalid conversation ID format",
                         f"conversation id {conversation_id[:80]!r} is malformed")


async def _owned(conversation_id: str, auth: AuthTuple, others_action: str) -> dict[str, Any]:
    """The conversation's metadata if the caller owns it or may act on others'; else 404."""
    _check_id(conversation_id)
    meta = await _runtime().userdb.get(conversation_id)
    if meta is None or (meta["user_id"] != auth.user_id and not may(auth, others_action)):
        raise NotFound("Conversation not found",
                       f"conversation {conversation_id} does not exist for this user")
    return meta


@route(bp, "/v1/conversations", "/conversations", "/v2/conversations")
@doc(summary="The caller's conversations, most recent first", tags=["conversations"],
     responses={200: ConversationListSchema})
@authorize(Action.LIST_CONVERSATIONS)
async def list_conversations() -> Any:
    auth = g.auth
    user = None if may(auth, Action.LIST_OTHERS_CONVERSATIONS) else auth.user_id
    rows = await _runtime().userdb.list(user)
    for row in rows:
        row["last_message_timestamp"] = row["last_message_at"]
        row.pop("user_id", None)
    return jsonify({"conversations": rows})


@route(bp, "/v1/conversations/<conversation_id>", "/conversations/<conversation_id>",
       "/v2/conversations/<conversation_id>")
@doc(summary="A conversation's history", tags=["conversations"],
     responses={200: ConversationSchema, 400: "Malformed id", 404: "Unknown conversation"})
@authorize(Action.GET_CONVERSATION)
async def get_conversation(conversation_id: str) -> Any:
    meta = await _owned(conversation_id, g.auth, Action.READ_OTHERS_CONVERSATIONS)
    runtime = _runtime()
    entries = await runtime.cache.get(meta["user_id"], conversation_id)
    if entries:
        history = [{
            "messages": [{"content": e.query, "type": "user"},
                         {"content": e.response, "type": "assistant"}],
            "started_at": e.started_at, "completed_at": e.completed_at,
            "provider": e.provider, "model": e.model,
            "referenced_documents": e.referenced_documents, "tool_calls": e.tool_calls,
            "tool_results": e.tool_results,
        } for e in entries]
    else:
        history = await _history_from_llama(runtime, conversation_id)
    return jsonify({"conversation_id": conversation_id, "chat_history": history})


async def _history_from_llama(runtime: Any, conversation_id: str) -> list[dict[str, Any]]:
    """Rebuild turns from Llama Stack's items when the cache keeps nothing (noop cache)."""
    with llama_errors("conversations.items.list"):
        page = await runtime.llama.client.conversations.items.list(conversation_id,
                                                                    order="asc")
    turns: list[dict[str, Any]] = []
    for item in getattr(page, "data", page):
        data = item.model_dump() if hasattr(item, "model_dump") else item
        if data.get("type") != "message" or data.get("role") not in ("user", "assistant"):
            continue
        content = data.get("content")
        text = content if isinstance(content, str) else "".join(
            p.get("text") or p.get("refusal") or "" for p in content or [])
        kind = data["role"]
        if kind == "user" or not turns:
            turns.append({"messages": [], "started_at": None, "completed_at": None})
        turns[-1]["messages"].append({"content": text, "type": kind})
    return turns


@route(bp, "/v1/conversations/<conversation_id>", "/conversations/<conversation_id>",
       "/v2/conversations/<conversation_id>", methods=["DELETE"])
@doc(summary="Delete a conversation (metadata, cache and Llama Stack)", tags=["conversations"],
     responses={200: DeleteSchema, 400: "Malformed id", 404: "Unknown conversation"})
@authorize(Action.DELETE_CONVERSATION)
async def delete_conversation(conversation_id: str) -> Any:
    meta = await _owned(conversation_id, g.auth, Action.DELETE_OTHERS_CONVERSATIONS)
    runtime = _runtime()
    try:
        with llama_errors("conversations.delete"):
            await runtime.llama.client.conversations.delete(conversation_id)
    except NotFound:
        pass  # already gone in Llama Stack: still remove LCore's records
    await runtime.cache.delete(meta["user_id"], conversation_id)
    await runtime.userdb.delete(conversation_id)
    return jsonify({"conversation_id": conversation_id, "success": True,
                    "response": "Conversation deleted successfully"})


@route(bp, "/v1/conversations/<conversation_id>", "/conversations/<conversation_id>",
       "/v2/conversations/<conversation_id>", methods=["PUT"])
@doc(summary="Update a conversation's topic summary", tags=["conversations"],
     body=UpdateRequestSchema, responses={200: UpdateSchema, 404: "Unknown conversation"})
@authorize(Action.UPDATE_CONVERSATION)
async def update_conversation(conversation_id: str) -> Any:
    meta = await _owned(conversation_id, g.auth, Action.READ_OTHERS_CONVERSATIONS)
    body = await load_body(UpdateRequestSchema)
    runtime = _runtime()
    await runtime.userdb.set_topic_summary(conversation_id, body["topic_summary"])
    await runtime.cache.set_topic_summary(meta["user_id"], conversation_id,
                                          body["topic_summary"])
    return jsonify({"conversation_id": conversation_id, "success": True,
                    "message": "Topic summary updated successfully"})
