"""`GET /v1/skills`: the loaded agent skills, read at start-up (no Llama Stack call)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields
from quart import Blueprint, current_app, jsonify

from lcore_core import skills
from lcore_core.auth import Action, authorize
from lcore_core.web import doc, route

bp = Blueprint("skills", __name__)


class SkillSchema(Schema):
    name = fields.String(required=True)
    description = fields.String(required=True)


class SkillsSchema(Schema):
    skills = fields.List(fields.Nested(SkillSchema), required=True)


@route(bp, "/v1/skills", "/skills")
@doc(summary="The agent skills loaded from `skills.paths`: name and description, by name",
     tags=["skills"], responses={200: SkillsSchema})
@authorize(Action.GET_SKILLS)
async def list_skills() -> Any:
    loaded = skills.loaded(current_app.runtime)  # type: ignore[attr-defined]
    return jsonify({"skills": [{"name": s.name, "description": s.description}
                               for s in loaded.skills]})
