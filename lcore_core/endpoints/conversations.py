"""Conversations: list, history, delete, topic summary update (all three path prefixes)."""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, datetime
from typing import Any

import structlog
from marshmallow import Schema, fields, validate
from quart import Blueprint, current_app, g, jsonify

from lcore_core.auth import Action, AuthTuple, authorize, may
from lcore_core.errors import BadRequest, NotFound
from lcore_core.llama import llama_errors
from lcore_core.pipeline import as_dict, message_text
from lcore_core.schemas import CONVERSATION_ID_PATTERN, conversation_key
from lcore_core.web import doc, load_body, route

bp = Blueprint("conversations", __name__)
log = structlog.get_logger("lcore.conversations")
_ID = re.compile(CONVERSATION_ID_PATTERN)


class ConversationSummarySchema(Schema):
    conversation_id = fields.String(required=True)
    created_at = fields.String()
    last_message_at = fields.String()
    last_message_timestamp = fields.Float(metadata={"description": "Seconds since the epoch"})
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
    deleted = fields.Boolean(required=True)
    response = fields.String(required=True)
    success = fields.Boolean(required=True, metadata={"deprecated": True,
                                                      "description": "Always true (upstream)"})


class UpdateRequestSchema(Schema):
    topic_summary = fields.String(required=True, validate=validate.Length(1, 1000))


class UpdateSchema(Schema):
    conversation_id = fields.String(required=True)
    success = fields.Boolean(required=True)
    message = fields.String(required=True)


def _runtime() -> Any:
    return current_app.runtime  # type: ignore[attr-defined]


def _key(conversation_id: str) -> str:
    """The id as LCore keeps it (400 when it is not one of upstream's forms)."""
    if not _ID.match(conversation_id):
        raise BadRequest("Invalid conversation ID format",
                         f"The conversation ID {conversation_id[:80]} has invalid format.")
    return conversation_key(conversation_id)


async def _visible(conversation_id: str, auth: AuthTuple,
                   others_action: str) -> dict[str, Any] | None:
    """The conversation's metadata if the caller owns it or may act on others'; else None."""
    meta = await _runtime().userdb.get(conversation_id)
    if meta is None or (meta["user_id"] != auth.user_id and not may(auth, others_action)):
        return None
    return meta


async def _owned(given: str, auth: AuthTuple, others_action: str) -> tuple[str, dict[str, Any]]:
    """The conversation's key and metadata if the caller owns it or may act on others'; else
    404 naming the id as the client wrote it."""
    conversation_id = _key(given)
    meta = await _visible(conversation_id, auth, others_action)
    if meta is None:
        raise NotFound.of("Conversation", given)
    return conversation_id, meta


@route(bp, "/v1/conversations", "/conversations", "/v2/conversations")
@doc(summary="The caller's conversations, most recent first", tags=["conversations"],
     responses={200: ConversationListSchema})
@authorize(Action.LIST_CONVERSATIONS)
async def list_conversations() -> Any:
    auth = g.auth
    user = None if may(auth, Action.LIST_OTHERS_CONVERSATIONS) else auth.user_id
    rows = await _runtime().userdb.list(user)
    for row in rows:
        # upstream's /v2 field: the last message's time in seconds since the epoch
        row["last_message_timestamp"] = datetime.fromisoformat(
            row["last_message_at"]).timestamp()
        row.pop("user_id", None)
    return jsonify({"conversations": rows})


@route(bp, "/v1/conversations/<conversation_id>", "/conversations/<conversation_id>",
       "/v2/conversations/<conversation_id>")
@doc(summary="A conversation's history", tags=["conversations"],
     responses={200: ConversationSchema, 400: "Malformed id", 404: "Unknown conversation"})
@authorize(Action.GET_CONVERSATION)
async def get_conversation(conversation_id: str) -> Any:
    conversation_id, meta = await _owned(conversation_id, g.auth,
                                         Action.READ_OTHERS_CONVERSATIONS)
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
    elif meta["response_ids"] is not None:
        history = await _history_from_responses(runtime, meta["response_ids"])
    else:
        history = await _history_from_llama(runtime, conversation_id)
    return jsonify({"conversation_id": conversation_id, "chat_history": history})


# Llama Stack calls in flight at once when a chained conversation is read or deleted.
CHAIN_CALLS = 8


async def _each_response(response_ids: list[str], call: Any) -> list[Any]:
    """`call(response_id)` for every response of a chain, a few at a time, in order."""
    gate = asyncio.Semaphore(CHAIN_CALLS)

    async def one(response_id: str) -> Any:
        async with gate:
            return await call(response_id)

    return await asyncio.gather(*(one(r) for r in response_ids))


async def _history_from_responses(runtime: Any, response_ids: list[str]) -> list[dict[str, Any]]:
    """Rebuild a chained conversation's turns from its stored responses (noop cache).

    Each response holds its turn's answer; the turn's question is the last of its input items
    (a stored response's input is the whole conversation so far, then the new question).
    """
    client = runtime.llama.client

    async def turn(response_id: str) -> dict[str, Any] | None:
        try:
            with llama_errors("responses.retrieve"):
                response = as_dict(await client.responses.retrieve(response_id))
            with llama_errors("responses.input_items.list"):
                page = await client.responses.input_items.list(response_id, order="desc",
                                                               limit=1)
        except NotFound:
            return None  # deleted in Llama Stack meanwhile: the turn is gone
        asked = [as_dict(i) for i in getattr(page, "data", page)]
        # Llama Stack's model id is "<provider>/<model>", as the query chose it.
        provider, _, model = str(response.get("model") or "").partition("/")
        if not model:
            provider, model = "", provider
        answer = "".join(message_text(o)[0] for o in response.get("output") or []
                         if o.get("type") == "message")
        return {"messages": [{"content": message_text(asked[0])[0] if asked else "",
                              "type": "user"},
                             {"content": answer, "type": "assistant"}],
                "started_at": _timestamp(response.get("created_at")),
                "completed_at": _timestamp(response.get("completed_at")),
                "provider": provider or None, "model": model}

    return [t for t in await _each_response(response_ids, turn) if t is not None]


def _timestamp(seconds: Any) -> str | None:
    if not isinstance(seconds, int | float):
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat()


# Llama Stack 0.7 lists a conversation's items without paging (20 unless told).
CONVERSATION_ITEMS_LIMIT = 10_000


async def _history_from_llama(runtime: Any, conversation_id: str) -> list[dict[str, Any]]:
    """Rebuild turns from a Llama Stack conversation's items (noop cache).

    Items made within one second share a timestamp, and Llama Stack 0.7 then lists them out of
    turn order (questions first), so the n-th question is paired with the n-th answer.
    """
    with llama_errors("conversations.items.list"):
        page = await runtime.llama.client.conversations.items.list(
            conversation_id, order="asc", limit=CONVERSATION_ITEMS_LIMIT)
    said: dict[str, list[str]] = {"user": [], "assistant": []}
    for item in getattr(page, "data", page):
        data = as_dict(item)
        if data.get("type") == "message" and data.get("role") in said:
            said[data["role"]].append(message_text(data)[0])
    turns = []
    for question, answer in itertools.zip_longest(said["user"], said["assistant"]):
        messages = [{"content": question, "type": "user"}] if question is not None else []
        if answer is not None:
            messages.append({"content": answer, "type": "assistant"})
        turns.append({"messages": messages, "started_at": None, "completed_at": None})
    return turns


@route(bp, "/v1/conversations/<conversation_id>", "/conversations/<conversation_id>",
       "/v2/conversations/<conversation_id>", methods=["DELETE"])
@doc(summary="Delete a conversation (metadata, cache and Llama Stack)", tags=["conversations"],
     responses={200: DeleteSchema, 400: "Malformed id"})
@authorize(Action.DELETE_CONVERSATION)
async def delete_conversation(conversation_id: str) -> Any:
    conversation_id = _key(conversation_id)
    meta = await _visible(conversation_id, g.auth, Action.DELETE_OTHERS_CONVERSATIONS)
    if meta is None:
        # As upstream: 200 with deleted false (and, for another user's conversation, nothing
        # that tells it exists).
        return jsonify({"conversation_id": conversation_id, "deleted": False,
                        "response": "Conversation not found", "success": True})
    runtime = _runtime()
    if meta["response_ids"] is not None:
        # Each stored response of the chain holds the conversation up to its turn.
        await _each_response(meta["response_ids"], lambda r: _forget(
            "responses.delete", runtime.llama.client.responses.delete, r))
    else:
        await _forget("conversations.delete", runtime.llama.client.conversations.delete,
                      conversation_id)
    await runtime.cache.delete(meta["user_id"], conversation_id)
    await runtime.userdb.delete(conversation_id)
    return jsonify({"conversation_id": conversation_id, "deleted": True,
                    "response": "Conversation deleted successfully", "success": True})


async def _forget(operation: str, delete: Any, llama_id: str) -> None:
    try:
        with llama_errors(operation):
            await delete(llama_id)
    except NotFound:
        pass  # already gone in Llama Stack: still remove LCore's records


@route(bp, "/v1/conversations/<conversation_id>", "/conversations/<conversation_id>",
       "/v2/conversations/<conversation_id>", methods=["PUT"])
@doc(summary="Update a conversation's topic summary", tags=["conversations"],
     body=UpdateRequestSchema, responses={200: UpdateSchema, 404: "Unknown conversation"})
@authorize(Action.UPDATE_CONVERSATION)
async def update_conversation(conversation_id: str) -> Any:
    # Renaming another user's conversation is a write: upstream's action for acting on others'
    # conversations (reading them is not enough).
    conversation_id, meta = await _owned(conversation_id, g.auth,
                                         Action.QUERY_OTHERS_CONVERSATIONS)
    body = await load_body(UpdateRequestSchema)
    runtime = _runtime()
    await runtime.userdb.set_topic_summary(conversation_id, body["topic_summary"])
    await runtime.cache.set_topic_summary(meta["user_id"], conversation_id,
                                          body["topic_summary"])
    return jsonify({"conversation_id": conversation_id, "success": True,
                    "message": "Topic summary updated successfully"})
