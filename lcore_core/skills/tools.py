"""The three skill tools the model gets, what they answer, and the catalog in the instructions.

Names, parameters and answer formats are upstream's (its agents use pydantic-ai-skills), so a
client reading `tool_calls`/`tool_results` sees the same: `list_skills` answers a JSON object
of name to description, `load_skill` a `<skill>` document with the resources and the
instructions, `read_skill_resource` the file's text. Upstream's fourth tool, `run_skill_script`,
is not offered: LCore runs no code from skill directories.
"""

from __future__ import annotations

import json
from typing import Any

from lcore_core.skills.catalog import (
    MAX_NAME,
    Catalog,
    ResourceError,
    Skill,
    read_resource,
)

#: How `/v1/tools` reports the skill tools (upstream's values).
PROVIDER_ID = "agent-skills"
TOOLGROUP_ID = "builtin::agent-skills"

_NAME = {"type": "string", "maxLength": MAX_NAME,
         "description": "The skill's exact name, as list_skills or the instructions give it."}

TOOLS: list[dict[str, Any]] = [
    {
        "name": "list_skills",
        "description": "List the available skills: each skill's name and what it is for. "
                       "Skills hold instructions and reference files for specific tasks.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "load_skill",
        "description": "Load a skill's full instructions and the names of its resource files. "
                       "Load the skill whose description fits the task before doing the task, "
                       "and follow what it says.",
        "inputSchema": {"type": "object", "properties": {"skill_name": _NAME},
                        "required": ["skill_name"]},
    },
    {
        "name": "read_skill_resource",
        "description": "Read one resource file of a skill (reference documentation, templates, "
                       "data). Use a resource name exactly as load_skill listed it.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "skill_name": {**_NAME, "description": "The skill the resource belongs to."},
                "resource_name": {"type": "string", "maxLength": 1024,
                                  "description": "The resource's path inside the skill, "
                                                 "exactly as load_skill listed it, such as "
                                                 "references/guide.md."},
                "args": {"type": "object",
                         "description": "Unused: file resources take no arguments."},
            },
            "required": ["skill_name", "resource_name"],
        },
    },
]
TOOL_NAMES = frozenset(t["name"] for t in TOOLS)


class ToolFailure(Exception):
    """The tool call cannot be answered; the message goes back to the model."""


def call(catalog: Catalog, name: str, arguments: dict[str, Any]) -> str:
    """Answer one tool call, or raise `ToolFailure`."""
    if name == "list_skills":
        return json.dumps({s.name: s.description for s in catalog.skills},
                          ensure_ascii=False, separators=(",", ":"))
    if name not in TOOL_NAMES:
        raise ToolFailure(f"Unknown tool {name!r}")
    skill_name = arguments.get("skill_name")
    skill = catalog.get(skill_name) if isinstance(skill_name, str) else None
    if skill is None:
        raise ToolFailure(f"Skill {skill_name!r} not found. Available skills: "
                          f"{', '.join(catalog.names) or 'none'}. Use an exact name from "
                          f"list_skills.")
    if name == "load_skill":
        return skill_document(skill)
    resource = arguments.get("resource_name")
    if not isinstance(resource, str):
        raise ToolFailure("resource_name must be a string")
    try:
        return read_resource(skill, resource)
    except ResourceError as exc:
        raise ToolFailure(str(exc)) from None


def skill_document(skill: Skill) -> str:
    """What `load_skill` answers (upstream's layout; no scripts, since none are run)."""
    resources = "\n".join(f'<resource name="{r}" />' for r in skill.resources) \
        or "<!-- No resources -->"
    return (f"<skill>\n<name>{skill.name}</name>\n<description>{skill.description}"
            f"</description>\n<uri>{skill.directory}</uri>\n\n<resources>\n{resources}\n"
            f"</resources>\n\n<scripts>\n<!-- No scripts -->\n</scripts>\n\n<instructions>\n"
            f"{skill.instructions}\n</instructions>\n</skill>\n")


def instructions(catalog: Catalog) -> str:
    """Appended to the system prompt of a query that offers the skill tools."""
    entries = "\n".join(f"<skill>\n<name>{s.name}</name>\n<description>{s.description}"
                        f"</description>\n</skill>" for s in catalog.skills)
    return (
        "\n\n# Skills\n"
        "Skills are packaged instructions and reference files for particular tasks. These are "
        "available:\n"
        f"<available_skills>\n{entries}\n</available_skills>\n"
        "When a request falls within a skill's description, call load_skill with that "
        "skill's name first and follow the instructions it returns. Read a file the skill "
        "lists under <resources> with read_skill_resource, using the name exactly as listed; "
        "do not guess names. Load only the skills and files the request needs."
    )


def catalog_entries() -> list[dict[str, Any]]:
    """The skill tools in `/v1/tools`' shape (upstream reports them as built-in tools)."""
    entries = []
    for tool in TOOLS:
        schema = tool["inputSchema"]
        required = set(schema.get("required") or ())
        entries.append({
            "identifier": tool["name"], "description": tool["description"],
            "parameters": [{"name": name, "description": spec.get("description") or "",
                            "parameter_type": spec.get("type") or "string",
                            "required": name in required, "default": None}
                           for name, spec in schema["properties"].items()],
            "provider_id": PROVIDER_ID, "toolgroup_id": TOOLGROUP_ID,
            "server_source": "builtin", "type": "tool", "source": "builtin"})
    return entries
