"""The A2A agent card: `customization.agent_card_config` (or the YAML file of `agent_card_path`,
which the core reads into it) over defaults taken from the rest of the configuration.

Keys may be camelCase (the wire format) or snake_case (upstream's YAML); `capabilities.streaming`
is always true and `url` always points at this service's `/a2a`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentSkill,
    APIKeySecurityScheme,
    HTTPAuthSecurityScheme,
    In,
    SecurityScheme,
)
from marshmallow import INCLUDE, Schema, fields

from lcore_core import __version__

if TYPE_CHECKING:
    from lcore_core import Config



class AgentCardSchema(Schema):
    """The card's JSON (a2a-sdk's AgentCard, camelCase) for the OpenAPI document."""

    class Meta:
        unknown = INCLUDE

    name = fields.String(required=True)
    description = fields.String(required=True)
    url = fields.String(required=True)
    version = fields.String(required=True)
    capabilities = fields.Dict(required=True)
    skills = fields.List(fields.Dict(), required=True)
    defaultInputModes = fields.List(fields.String(), required=True)
    defaultOutputModes = fields.List(fields.String(), required=True)
    protocolVersion = fields.String()
    preferredTransport = fields.String()
    additionalInterfaces = fields.List(fields.Dict(), allow_none=True)
    documentationUrl = fields.String(allow_none=True)
    iconUrl = fields.String(allow_none=True)
    provider = fields.Dict(allow_none=True)
    security = fields.List(fields.Dict(), allow_none=True)
    securitySchemes = fields.Dict(allow_none=True)
    signatures = fields.List(fields.Dict(), allow_none=True)
    supportsAuthenticatedExtendedCard = fields.Boolean(allow_none=True)


A2A_PATH = "/a2a"
TEXT = "text/plain"
DEFAULT_SKILL = AgentSkill(
    id="query", name="Question answering",
    description="Answers questions in multi-turn conversations, with the service's knowledge "
                "sources (RAG), tools (MCP) and guardrails.",
    tags=["question-answering", "conversation"], input_modes=[TEXT], output_modes=[TEXT])

# Authentication modules and what a client must send (absent: a Bearer token).
NO_CREDENTIALS = frozenset({"noop"})
HEADER_CREDENTIALS = {"rh-identity": "x-rh-identity"}


def service_url(config: Config, request_root: str) -> str:
    """`service.base_url` when configured, else the URL this request came in on."""
    base = config.service.get("base_url") or request_root
    return str(base).rstrip("/")


def security(config: Config) -> tuple[dict[str, SecurityScheme], list[dict[str, list[str]]]]:
    """Security schemes matching `authentication.module`; nothing for `noop`."""
    module = config.authentication.module
    if module in NO_CREDENTIALS:
        return {}, []
    if module in HEADER_CREDENTIALS:
        scheme = SecurityScheme(root=APIKeySecurityScheme(
            name=HEADER_CREDENTIALS[module], in_=In.header,
            description=f"authentication module {module}"))
        return {module: scheme}, [{module: []}]
    scheme = SecurityScheme(root=HTTPAuthSecurityScheme(
        scheme="bearer", bearer_format="JWT" if module in ("jwk-token", "k8s") else None,
        description=f"authentication module {module}"))
    return {"bearer": scheme}, [{"bearer": []}]


def build_card(config: Config, request_root: str) -> AgentCard:
    """The card for this service; raises pydantic's `ValidationError` for a bad card config."""
    custom = (config.get("customization") or {}).get("agent_card_config") or {}
    base = service_url(config, request_root)
    schemes, requirements = security(config)
    data: dict[str, Any] = {
        "name": config.name,
        "description": f"{config.name}: an LCore assistant served over A2A",
        "version": __version__,
        "skills": [DEFAULT_SKILL.model_dump(mode="json", exclude_none=True)],
        "defaultInputModes": [TEXT],
        "defaultOutputModes": [TEXT],
    }
    if schemes:
        data["securitySchemes"] = {k: v.model_dump(mode="json", exclude_none=True)
                                   for k, v in schemes.items()}
        data["security"] = requirements
    for key, value in custom.items():
        data[_camel(key)] = value
    data["url"] = base + A2A_PATH
    data["preferredTransport"] = "JSONRPC"
    data["protocolVersion"] = "0.3.0"
    capabilities = AgentCapabilities.model_validate(data.get("capabilities") or {})
    capabilities.streaming = True
    capabilities.push_notifications = False
    data["capabilities"] = capabilities.model_dump(mode="json", exclude_none=True)
    return AgentCard.model_validate(data)


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)
