"""Stored prompt templates, passed on to Llama Stack's prompts API (upstream's `/v1/prompts`).

Llama Stack keeps each prompt as numbered versions: an update writes version n+1 of the latest
version n, and a read without `version` gets the default one.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import structlog
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from quart import Blueprint, current_app, jsonify, request

from lcore_core import validation
from lcore_core.auth import Action, authorize
from lcore_core.errors import (
    BadRequest,
    Conflict,
    LCoreError,
    NotFound,
)
from lcore_core.llama import call_llama
from lcore_core.schemas import LaxInteger
from lcore_core.web import doc, load_body, route

bp = Blueprint("prompts", __name__)
log = structlog.get_logger("lcore.prompts")

# Bounds on what a client sends (upstream sets none; Llama Stack keeps whatever it is given).
MAX_PROMPT_LENGTH = 65_536
MAX_VARIABLES = 64
MAX_VARIABLE_LENGTH = 128
MAX_VERSION = 2**31 - 1
# Echoed back in a 400 for an id that is not one: at most this much of it.
MAX_ECHOED_ID = 256

# Llama Stack's prompt ids: pmpt_ and 48 hex digits (upstream checks the same before calling).
_PROMPT_ID = re.compile(r"pmpt_[0-9a-fA-F]{48}\Z")
# A placeholder as Llama Stack reads one from the template ({{ name }}).
_PLACEHOLDER = re.compile(r"{{\s*(\w+)\s*}}")
_UNAVAILABLE = "Llama Stack unavailable"


# --- request shapes ---------------------------------------------------------------------


def _variables() -> fields.List:
    return fields.List(fields.String(validate=validate.Length(1, MAX_VARIABLE_LENGTH)),
                       load_default=None, allow_none=True,
                       validate=validate.Length(max=MAX_VARIABLES),
                       metadata={"description": "Variable names allowed in the template"})


def _check_placeholders(data: dict[str, Any]) -> None:
    """Llama Stack refuses a template using a variable it does not declare: said here as a
    422 naming them (upstream passes Llama Stack's refusal on as a 500)."""
    undeclared = sorted(set(_PLACEHOLDER.findall(data["prompt"])) - set(data.get("variables")
                                                                       or ()))
    if undeclared:
        raise ValidationError(f"the template uses undeclared variables {undeclared}: list "
                              f"them in 'variables'", "variables")


class PromptCreateRequestSchema(Schema):
    prompt = fields.String(required=True, validate=validate.Length(1, MAX_PROMPT_LENGTH),
                           metadata={"description": "Prompt text with variable placeholders",
                                     "example": "Summarize: {{text}}"})
    variables = _variables()

    @validates_schema
    def _declared(self, data: dict[str, Any], **_: Any) -> None:
        _check_placeholders(data)


class PromptUpdateRequestSchema(Schema):
    prompt = fields.String(required=True, validate=validate.Length(1, MAX_PROMPT_LENGTH),
                           metadata={"description": "Updated prompt text"})
    version = LaxInteger(required=True,
                         validate=validate.Range(0, MAX_VERSION, min_inclusive=False),
                         metadata={"description": "Current (latest) version being updated"})
    set_as_default = fields.Boolean(load_default=None, allow_none=True,
                                    metadata={"description": "Whether the new version becomes "
                                                             "the default (Llama Stack: yes)"})
    variables = _variables()

    @validates_schema
    def _declared(self, data: dict[str, Any], **_: Any) -> None:
        _check_placeholders(data)


class PromptVersionQuerySchema(Schema):
    version = fields.Integer(load_default=None, validate=validate.Range(1, MAX_VERSION),
                             metadata={"description": "Version to read (default: the default "
                                                      "version)"})


# --- response shapes --------------------------------------------------------------------


class PromptResourceSchema(Schema):
    prompt_id = fields.String(required=True)
    version = fields.Integer(required=True)
    is_default = fields.Boolean(allow_none=True)
    prompt = fields.String(allow_none=True)
    variables = fields.List(fields.String(), allow_none=True)


class PromptsListSchema(Schema):
    data = fields.List(fields.Nested(PromptResourceSchema), required=True)


class PromptDeleteSchema(Schema):
    prompt_id = fields.String(required=True)
    deleted = fields.Boolean(required=True)
    response = fields.String(required=True)


# --- helpers ----------------------------------------------------------------------------


def _client() -> Any:
    return current_app.runtime.llama.client  # type: ignore[attr-defined]


def _value(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _prompt(found: Any) -> dict[str, Any]:
    return {name: _value(found, name)
            for name in ("prompt_id", "version", "is_default", "prompt", "variables")}


def _valid_id(prompt_id: str) -> None:
    """Upstream's 400 for an id Llama Stack could not have issued (nothing is asked)."""
    if not _PROMPT_ID.match(prompt_id):
        raise BadRequest("Invalid prompt ID format",
                         f"The prompt ID {prompt_id[:MAX_ECHOED_ID]} has invalid format.")


def _not_found(prompt_id: str) -> NotFound:
    return NotFound.of("Prompt", prompt_id)


def _unknown(exc: LCoreError) -> bool:
    return isinstance(exc, NotFound) or "not found" in exc.cause.lower()


def _missing(prompt_id: str) -> Any:
    def missing(exc: LCoreError) -> LCoreError | None:
        if _unknown(exc):
            return _not_found(prompt_id)
        cause = exc.cause.lower()
        # Llama Stack: "... is not the latest ..."; OGX: "... Must be the latest prompt version"
        if "not the latest" in cause or "must be the latest" in cause:
            # Upstream answers 404 here too; the prompt is there, the client's copy is stale.
            return Conflict("Prompt version is not the latest", exc.cause)
        return None  # another refusal: Llama Stack's 400

    return missing


# --- routes -----------------------------------------------------------------------------


@route(bp, "/v1/prompts", methods=["POST"])
@doc(summary="Create a stored prompt template (version 1)", tags=["prompts"],
     body=PromptCreateRequestSchema,
     responses={200: PromptResourceSchema, 422: "Invalid body (an undeclared variable too)",
                503: _UNAVAILABLE})
@authorize(Action.MANAGE_PROMPTS)
async def create_prompt() -> Any:
    body = await load_body(PromptCreateRequestSchema)
    arguments = {k: v for k, v in body.items() if v is not None}
    created = await call_llama("prompts.create", lambda: _client().prompts.create(**arguments))
    log.info("prompt created", prompt_id=_value(created, "prompt_id"))
    return jsonify(_prompt(created))


@route(bp, "/v1/prompts")
@doc(summary="List stored prompt templates (each at its default version)", tags=["prompts"],
     responses={200: PromptsListSchema, 503: _UNAVAILABLE})
@authorize(Action.READ_PROMPTS)
async def list_prompts() -> Any:
    found = await call_llama("prompts.list", lambda: _client().prompts.list())
    items = _value(found, "data") if not isinstance(found, list) else found
    return jsonify({"data": [_prompt(p) for p in items or []]})


@route(bp, "/v1/prompts/<prompt_id>")
@doc(summary="One stored prompt template (the default version, or `version`)",
     tags=["prompts"], query=PromptVersionQuerySchema,
     responses={200: PromptResourceSchema, 400: "Not a prompt id",
                404: "Unknown prompt or version", 422: "Invalid version", 503: _UNAVAILABLE})
@authorize(Action.READ_PROMPTS)
async def get_prompt(prompt_id: str) -> Any:
    args = request.args.to_dict()
    try:
        query = PromptVersionQuerySchema().load(args)
    except ValidationError as exc:
        raise validation.invalid(exc.messages, args, "query") from None
    _valid_id(prompt_id)
    version = query["version"]
    arguments = {"version": version} if version is not None else {}
    found = await call_llama("prompts.retrieve",
                             lambda: _client().prompts.retrieve(prompt_id, **arguments),
                             _missing(prompt_id))
    return jsonify(_prompt(found))


@route(bp, "/v1/prompts/<prompt_id>", methods=["PUT"])
@doc(summary="Write a new version of a stored prompt template", tags=["prompts"],
     body=PromptUpdateRequestSchema,
     responses={200: PromptResourceSchema, 400: "Not a prompt id", 404: "Unknown prompt",
                409: "`version` is not the prompt's latest version", 422: "Invalid body",
                503: _UNAVAILABLE})
@authorize(Action.MANAGE_PROMPTS)
async def update_prompt(prompt_id: str) -> Any:
    body = await load_body(PromptUpdateRequestSchema)
    _valid_id(prompt_id)
    arguments = {k: v for k, v in body.items() if v is not None}
    updated = await call_llama("prompts.update",
                               lambda: _client().prompts.update(prompt_id, **arguments),
                               _missing(prompt_id))
    log.info("prompt updated", prompt_id=prompt_id, version=_value(updated, "version"))
    return jsonify(_prompt(updated))


@route(bp, "/v1/prompts/<prompt_id>", methods=["DELETE"])
@doc(summary="Delete a stored prompt template, every version (200 with deleted: false when "
             "unknown)", tags=["prompts"],
     responses={200: PromptDeleteSchema, 400: "Not a prompt id", 503: _UNAVAILABLE})
@authorize(Action.MANAGE_PROMPTS)
async def delete_prompt(prompt_id: str) -> Any:
    _valid_id(prompt_id)
    deleted = False
    with contextlib.suppress(_Gone):
        await call_llama("prompts.delete", lambda: _client().prompts.delete(prompt_id),
                         lambda exc: _Gone("not found") if _unknown(exc) else None)
        deleted = True
    log.info("prompt deleted" if deleted else "prompt to delete not found", prompt_id=prompt_id)
    return jsonify({"prompt_id": prompt_id, "deleted": deleted,
                    "response": "Prompt deleted successfully" if deleted
                    else "Prompt not found"})


class _Gone(LCoreError):
    """What delete was asked to remove is not there (upstream answers 200, deleted: false)."""
