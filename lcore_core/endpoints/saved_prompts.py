"""Saved prompts (upstream's `/v1/saved-prompts`): each user's named prompt texts, kept in the
user DB's database (`lcore_core.saved_prompts`), within the `saved_prompts` limits."""

from __future__ import annotations

import re
from typing import Any

import structlog
from marshmallow import Schema, fields
from quart import Blueprint, current_app, g, jsonify

from lcore_core.auth import Action, authorize
from lcore_core.errors import BadRequest, Conflict, UnprocessableEntity
from lcore_core.saved_prompts import LimitReached, NameTaken
from lcore_core.web import doc, load_body, route

bp = Blueprint("saved_prompts", __name__)
log = structlog.get_logger("lcore.saved_prompts")

# The ids upstream accepts: a UUID (what it and LCore issue), or Llama Stack's 48 hex digits
# with or without conv_. Anything else is a 400 without asking the database.
_ID = re.compile(r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
                 r"|(conv_)?[0-9a-fA-F]{48})\Z")
MAX_ECHOED_ID = 256
_INVALID = "Invalid attribute value"


class SavedPromptCreateRequestSchema(Schema):
    """Lengths are checked against the `saved_prompts` limits (422 naming the limit)."""

    name = fields.String(required=True, metadata={"description": "Display name, unique per "
                                                                 "user (leading and trailing "
                                                                 "spaces are dropped)",
                                                  "example": "Deploy to staging"})
    content = fields.String(required=True, metadata={"description": "Prompt body text"})


class SavedPromptSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    content = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class SavedPromptsListSchema(Schema):
    prompts = fields.List(fields.Nested(SavedPromptSchema), required=True,
                          metadata={"description": "The caller's saved prompts, newest first"})


class SavedPromptsConfigSchema(Schema):
    max_prompts_per_user = fields.Integer(required=True)
    max_display_name_length = fields.Integer(required=True)
    max_content_length = fields.Integer(required=True)


class SavedPromptDeleteSchema(Schema):
    prompt_id = fields.String(required=True)
    deleted = fields.Boolean(required=True)
    response = fields.String(required=True)


def _limits() -> Any:
    return current_app.runtime.config.saved_prompts  # type: ignore[attr-defined]


def _store() -> Any:
    return current_app.runtime.saved_prompts  # type: ignore[attr-defined]


@route(bp, "/v1/saved-prompts/config")
@doc(summary="The saved prompts limits this service enforces", tags=["saved-prompts"],
     responses={200: SavedPromptsConfigSchema})
@authorize(Action.GET_CONFIG)
async def saved_prompts_config() -> Any:
    limits = _limits()
    return jsonify({key: limits[key] for key in
                    ("max_prompts_per_user", "max_display_name_length", "max_content_length")})


@route(bp, "/v1/saved-prompts")
@doc(summary="The caller's saved prompts, newest first", tags=["saved-prompts"],
     responses={200: SavedPromptsListSchema, 500: "Database error"})
@authorize(Action.MANAGE_SAVED_PROMPTS)
async def list_saved_prompts() -> Any:
    return jsonify({"prompts": await _store().list(g.auth.user_id)})


@route(bp, "/v1/saved-prompts", methods=["POST"])
@doc(summary="Save a prompt for the caller", tags=["saved-prompts"],
     body=SavedPromptCreateRequestSchema,
     responses={201: SavedPromptSchema, 409: "The caller has a saved prompt of that name",
                422: "Empty or too long name or content, a NUL character in them, or the "
                     "caller keeps as many saved prompts as allowed",
                500: "Database error"})
@authorize(Action.MANAGE_SAVED_PROMPTS)
async def create_saved_prompt() -> Any:
    body = await load_body(SavedPromptCreateRequestSchema)
    limits = _limits()
    # Names are labels: padding means nothing and would let near-duplicates past uniqueness.
    # Content is kept as written.
    name, content = body["name"].strip(), body["content"]
    if not name:
        raise UnprocessableEntity(_INVALID, "Saved prompt name must not be empty")
    for field, text in (("name", name), ("content", content)):
        if "\x00" in text:  # PostgreSQL's text cannot hold it: refused on every backend
            raise UnprocessableEntity(_INVALID, f"Saved prompt {field} must not contain NUL "
                                                "(U+0000) characters")
    if len(name) > limits.max_display_name_length:
        raise UnprocessableEntity(_INVALID, f"Saved prompt name length {len(name)} exceeds "
                                            f"maximum {limits.max_display_name_length}")
    if not content.strip():
        raise UnprocessableEntity(_INVALID, "Saved prompt content must not be empty")
    if len(content) > limits.max_content_length:
        raise UnprocessableEntity(_INVALID, f"Saved prompt content length {len(content)} "
                                            f"exceeds maximum {limits.max_content_length}")
    try:
        saved = await _store().create(g.auth.user_id, name, content,
                                      limit=limits.max_prompts_per_user)
    except LimitReached as exc:
        raise UnprocessableEntity("Saved prompt limit exceeded", str(exc)) from None
    except NameTaken:
        raise Conflict("Saved Prompt already exists",
                       f"Saved Prompt with name '{name}' is already registered") from None
    log.info("saved prompt created", saved_prompt_id=saved["id"])
    return jsonify(saved), 201


@route(bp, "/v1/saved-prompts/<prompt_id>", methods=["DELETE"])
@doc(summary="Delete one of the caller's saved prompts (200 with deleted: false when the "
             "caller has none of that id)", tags=["saved-prompts"],
     responses={200: SavedPromptDeleteSchema, 400: "Not a saved prompt id",
                500: "Database error"})
@authorize(Action.MANAGE_SAVED_PROMPTS)
async def delete_saved_prompt(prompt_id: str) -> Any:
    if not _ID.match(prompt_id):
        raise BadRequest("Invalid saved prompt ID format",
                         f"The saved prompt ID {prompt_id[:MAX_ECHOED_ID]} has invalid format.")
    # Another user's prompt is "not found" too (upstream: 403): its existence is not told, as
    # for conversations.
    deleted = await _store().delete(prompt_id, g.auth.user_id)
    log.info("saved prompt deleted" if deleted else "saved prompt to delete not found",
             saved_prompt_id=prompt_id)
    return jsonify({"prompt_id": prompt_id, "deleted": deleted,
                    "response": "Saved prompt deleted successfully" if deleted
                    else "Saved prompt not found"})
