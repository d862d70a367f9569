"""Feedback, feedback status, effective config and `/authorized`."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)
from quart import Blueprint, current_app, g, jsonify

from lcore_core.auth import Action, authenticate_request, authorize
from lcore_core.errors import Forbidden, NotFound, StorageError
from lcore_core.files import write_atomically
from lcore_core.schemas import CONVERSATION_ID_PATTERN, LaxInteger, conversation_key
from lcore_core.web import doc, load_body, route

bp = Blueprint("feedback", __name__)
log = structlog.get_logger("lcore.feedback")

#: Key of the runtime feedback toggle in `runtime.state` (absent: the configured value).
FEEDBACK_ENABLED = "feedback_enabled"
MAX_USER_FEEDBACK_CHARS = 4096


class FeedbackCategory(StrEnum):
    """Upstream's categories for negative feedback."""

    INCORRECT = "incorrect"
    NOT_RELEVANT = "not_relevant"
    INCOMPLETE = "incomplete"
    OUTDATED_INFORMATION = "outdated_information"
    UNSAFE = "unsafe"
    OTHER = "other"


class PositiveFeedbackCategory(StrEnum):
    """Upstream's categories for positive feedback."""

    HELPFUL = "helpful"
    ACCURATE = "accurate"
    CLEAR = "clear"
    RELEVANT = "relevant"
    ACTIONABLE = "actionable"
    RESOLVED_ISSUE = "resolved_issue"


CATEGORIES = [c.value for c in (*FeedbackCategory, *PositiveFeedbackCategory)]


class FeedbackRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    conversation_id = fields.String(
        required=True,
        validate=validate.Regexp(CONVERSATION_ID_PATTERN,
                                 error="Improper conversation ID {input}"))
    user_question = fields.String(required=True)
    llm_response = fields.String(required=True)
    sentiment = LaxInteger(load_default=None, allow_none=True,
                           validate=validate.OneOf([-1, 1], error=(
                               "Improper sentiment value of {input}, needs to be -1 or 1")))
    user_feedback = fields.String(load_default=None, allow_none=True,
                                  validate=validate.Length(max=MAX_USER_FEEDBACK_CHARS))
    categories = fields.List(fields.String(validate=validate.OneOf(CATEGORIES)),
                             load_default=None, allow_none=True)

    @post_load
    def _normalise(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        # As upstream: an empty list means none; duplicates are dropped, order kept.
        if data["categories"] is not None:
            data["categories"] = list(dict.fromkeys(data["categories"])) or None
        return data

    @validates_schema
    def _some_feedback(self, data: dict[str, Any], **_: Any) -> None:
        if (data.get("sentiment") is None and not data.get("user_feedback")
                and not data.get("categories")):
            raise ValidationError("At least one form of feedback must be provided: "
                                  "'sentiment', 'user_feedback', or 'categories'")


class FeedbackResponseSchema(Schema):
    response = fields.String(required=True)


class FeedbackStatusSchema(Schema):
    functionality = fields.String(required=True)
    status = fields.Dict(required=True)


class FeedbackStatusUpdateRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    status = fields.Boolean(load_default=False)  # as upstream: absent means off


class FeedbackStatusUpdateSchema(Schema):
    status = fields.Dict(required=True, metadata={
        "description": "previous_status, updated_status, updated_by, timestamp"})


class ConfigurationSchema(Schema):
    configuration = fields.Dict(required=True)


class AuthorizedSchema(Schema):
    user_id = fields.String(required=True)
    username = fields.String(required=True)
    skip_userid_check = fields.Boolean(required=True)


def _runtime() -> Any:
    return current_app.runtime  # type: ignore[attr-defined]


def feedback_enabled(runtime: Any) -> bool:
    """The runtime toggle when set, else `user_data_collection.feedback_enabled`."""
    state = runtime.state.get(FEEDBACK_ENABLED)
    if state is not None:
        return bool(state)
    return bool(runtime.config.user_data_collection.feedback_enabled)


def store_feedback(directory: str | Path, record: dict[str, Any]) -> Path:
    """Write one record as `<uuid>.json` in `directory`, atomically; returns the file."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    return write_atomically(folder / f"{uuid.uuid4()}.json", json.dumps(record))


async def _check_owner(runtime: Any, conversation_id: str, user_id: str) -> None:
    """Feedback only on a conversation that exists and is the caller's (upstream's texts)."""
    meta = await runtime.userdb.get(conversation_key(conversation_id))
    if meta is None:
        raise NotFound.of("Conversation", conversation_id)
    if meta["user_id"] != user_id:
        raise Forbidden("User does not have permission to perform this action",
                        f"User {user_id} does not have permission to submit feedback for "
                        f"conversation with ID {conversation_id}")


@route(bp, "/v1/feedback", "/feedback", methods=["POST"])
@doc(summary="Store the caller's feedback on an answer", tags=["feedback"],
     body=FeedbackRequestSchema,
     responses={200: FeedbackResponseSchema,
                403: "Feedback is disabled or not allowed, or the conversation is another "
                     "user's",
                404: "Unknown conversation", 500: "Feedback could not be stored"})
@authorize(Action.FEEDBACK)
async def feedback() -> Any:
    runtime = _runtime()
    if not feedback_enabled(runtime):
        raise Forbidden("Storing feedback is disabled", "Storing feedback is disabled.")
    body = await load_body(FeedbackRequestSchema)
    await _check_owner(runtime, body["conversation_id"], g.auth.user_id)
    storage = runtime.config.user_data_collection.feedback_storage
    if not storage:
        raise StorageError("Failed to store feedback",
                           "user_data_collection.feedback_storage is not configured")
    record = {"user_id": g.auth.user_id, "timestamp": str(datetime.now(UTC)), **body}
    try:
        path = await asyncio.to_thread(store_feedback, storage, record)
    except OSError as exc:
        log.error("feedback not stored", error=str(exc))
        # upstream's texts; the directory is the configured one, the OS's reason is logged
        raise StorageError("Failed to store feedback",
                           f"Failed to store feedback at directory: {storage}",
                           private=False) from exc
    log.info("feedback stored", file=path.name)
    return jsonify({"response": "feedback received"})


@route(bp, "/v1/feedback/status", "/feedback/status")
@doc(summary="Whether feedback is being collected", tags=["feedback"],
     responses={200: FeedbackStatusSchema})
async def feedback_status() -> Any:
    # Public as upstream: clients ask before showing a feedback form.
    return jsonify({"functionality": "feedback",
                    "status": {"enabled": feedback_enabled(_runtime())}})


@route(bp, "/v1/feedback/status", "/feedback/status", methods=["PUT"])
@doc(summary="Turn feedback collection on or off (this process, until restart)",
     tags=["feedback"], body=FeedbackStatusUpdateRequestSchema,
     responses={200: FeedbackStatusUpdateSchema})
@authorize(Action.ADMIN)
async def update_feedback_status() -> Any:
    body = await load_body(FeedbackStatusUpdateRequestSchema)
    runtime = _runtime()
    previous = feedback_enabled(runtime)
    runtime.state[FEEDBACK_ENABLED] = body["status"]
    return jsonify({"status": {"previous_status": previous,
                               "updated_status": feedback_enabled(runtime),
                               "updated_by": g.auth.user_id,
                               "timestamp": str(datetime.now(UTC))}})


@route(bp, "/v1/config", "/config")
@doc(summary="The effective configuration, secrets masked", tags=["config"],
     responses={200: ConfigurationSchema})
@authorize(Action.GET_CONFIG)
async def config() -> Any:
    return jsonify({"configuration": _runtime().config.masked()})


@route(bp, "/authorized", "/v1/authorized", methods=["POST"])
@doc(summary="Who the caller is (authentication only, no action needed)",
     tags=["authorized"], responses={200: AuthorizedSchema, 401: "Missing or bad credentials"})
async def authorized() -> Any:
    # Upstream checks no action here: any authenticated caller may ask who they are.
    auth = await authenticate_request()
    return jsonify({"user_id": auth.user_id, "username": auth.username,
                    "skip_userid_check": auth.skip_user_id_check})
