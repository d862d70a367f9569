"""Request and response shapes (upstream's JSON field names), used for validation and OpenAPI."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema


class ErrorDetailSchema(Schema):
    # Some errors add fields: `errors` (422, per field), the limiter of a 429, ...
    class Meta:
        unknown = INCLUDE

    response = fields.String(required=True)
    cause = fields.String(required=True)
    errors = fields.Dict(metadata={"description": "422: the messages of each invalid field"})


class ErrorSchema(Schema):
    detail = fields.Nested(ErrorDetailSchema, required=True)


class LivenessSchema(Schema):
    alive = fields.Boolean(required=True)


class ProviderHealthSchema(Schema):
    provider_id = fields.String(required=True)
    status = fields.String(required=True)
    message = fields.String(allow_none=True)


class ReadinessSchema(Schema):
    ready = fields.Boolean(required=True)
    reason = fields.String(required=True)
    overall_status = fields.String(required=True,
                                   metadata={"enum": ["healthy", "degraded", "unhealthy"]})
    impacts = fields.List(fields.String(), allow_none=True)
    providers = fields.List(fields.Nested(ProviderHealthSchema), required=True)


class PluginInfoSchema(Schema):
    name = fields.String(required=True)
    distribution = fields.String(required=True)
    version = fields.String(required=True)
    hooks = fields.List(fields.String())
    error = fields.String(allow_none=True)


class InfoSchema(Schema):
    name = fields.String(required=True)
    service_version = fields.String(required=True)
    llama_stack_version = fields.String(required=True)
    plugins = fields.List(fields.Nested(PluginInfoSchema))


# --- query --------------------------------------------------------------------------------

# The conversation ids upstream accepts (its check_suid): a UUID, or Llama Stack's 48 hex digits
# with or without "conv_"; and "conv_" + a UUID, the id `lcore migrate` gives a conversation
# upstream kept under a UUID. Anything else is malformed: a 422 in a body, a 400 in a path.
# `(?!\n)$`: Python's `$` also matches before a final newline; the pattern is in the OpenAPI
# document too, so no Python-only `\Z`.
CONVERSATION_ID_PATTERN = (r"^(conv_)?([0-9a-fA-F]{48}|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?"
                           r"[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})(?!\n)$")


def conversation_key(conversation_id: str) -> str:
    """LCore's form of a well-formed conversation id: with Llama Stack's "conv_", hex digits
    in lower case. Upstream answers its ids without the prefix, and `lcore migrate` keeps
    upstream's conversations under this form of upstream's id, so a client that kept upstream's
    ids still finds them."""
    lowered = conversation_id.lower()
    return lowered if lowered.startswith("conv_") else f"conv_{lowered}"


# upstream's texts for a malformed conversation_id in a query body (and, unquoted, feedback's)
IMPROPER_CONVERSATION_ID = "Improper conversation ID '{input}'"
MAX_QUERY_CHARS = 100_000
MAX_SHIELD_IDS = 64
# Each vector store is one more search per query and each attachment more prompt: bounded, with
# repeats dropped. Upstream bounds neither list; these are far above what a client needs.
MAX_VECTOR_STORES = 16
MAX_ATTACHMENTS = 32
MAX_STORE_ID_CHARS = 256  # upstream's bound on a vector store id elsewhere in its API


# What pydantic's lax mode reads as an integer from a JSON string: ASCII digits, a sign, single
# underscores between digits, a zero fraction, surrounding whitespace ("1", " -1 ", "1_0", "1.0").
_LAX_INTEGER = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")


class LaxInteger(fields.Integer):
    """An integer read as upstream's pydantic models read an `int` field: also `true`/`false`,
    a number without a fractional part and a string holding an integer, so a client that sends
    `"sentiment": "1"` to upstream is answered the same by LCore."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool | int):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip(" \t\n\r\f\v")
            if _LAX_INTEGER.fullmatch(text):
                try:
                    return int(text.split(".")[0])
                except ValueError:  # past Python's 4300-digit limit for a conversion
                    pass
        raise self.make_error("invalid", input=value)


class CappedList(fields.List):
    """A list a client sends: at most `max_items` items (checked before any item is read; the
    OpenAPI document shows it as `maxItems`), repeated items dropped, the first one kept."""

    def __init__(self, inner: Any, *, max_items: int, what: str, **kwargs: Any) -> None:
        self.max_items = max_items
        self.too_many = f"at most {max_items} {what} per request"
        super().__init__(inner, validate=validate.Length(max=max_items, error=self.too_many),
                         **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, list) and len(value) > self.max_items:
            raise ValidationError(f"{self.too_many} (got {len(value)})")
        items = super()._deserialize(value, attr, data, **kwargs)
        seen: set[Any] = set()
        unique = []
        for item in items:
            # Items are strings or flat objects of strings (attachments): hashable as they are.
            key = tuple(sorted(item.items())) if isinstance(item, dict) else item
            if key not in seen:
                seen.add(key)
                unique.append(item)
        return unique


# The image types an attachment may have, by the bytes each starts with (upstream's).
IMAGE_SIGNATURES = {"image/png": b"\x89PNG", "image/jpeg": b"\xff\xd8\xff"}


class AttachmentSchema(Schema):
    attachment_type = fields.String(required=True, validate=validate.Length(1, 64))
    content_type = fields.String(required=True, validate=validate.Length(1, 128))
    content = fields.String(required=True, metadata={
        "description": "The text, or for an image (image/png, image/jpeg) its base64 bytes"})

    @validates_schema(skip_on_field_errors=True)
    def _image(self, data: dict[str, Any], **_: Any) -> None:
        # upstream's rules and texts: an image both ways or neither, valid base64 of that type
        kind, content_type = data["attachment_type"], data["content_type"]
        if (kind == "image") != (content_type in IMAGE_SIGNATURES):
            raise ValidationError(f"attachment_type and content_type are inconsistent: "
                                  f"attachment_type='{kind}', content_type='{content_type}'")
        if kind != "image":
            return
        try:
            decoded = base64.b64decode(data["content"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError(f"Invalid base64 content for image attachment: {exc}") from exc
        if not decoded.startswith(IMAGE_SIGNATURES[content_type]):
            raise ValidationError(f"Image content does not match declared content_type "
                                  f"'{content_type}': invalid image data")


class QueryRequestSchema(Schema):
    query = fields.String(required=True, validate=validate.Length(1, MAX_QUERY_CHARS))
    conversation_id = fields.String(
        load_default=None, allow_none=True,
        validate=validate.Regexp(CONVERSATION_ID_PATTERN, error=IMPROPER_CONVERSATION_ID))
    provider = fields.String(load_default=None, allow_none=True)
    model = fields.String(load_default=None, allow_none=True)
    system_prompt = fields.String(load_default=None, allow_none=True)
    attachments = CappedList(fields.Nested(AttachmentSchema), max_items=MAX_ATTACHMENTS,
                             what="attachments", load_default=None, allow_none=True)
    no_tools = fields.Boolean(load_default=False, allow_none=True)
    generate_topic_summary = fields.Boolean(load_default=True, allow_none=True)
    media_type = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(
        ["application/json", "text/plain"]))
    vector_store_ids = CappedList(fields.String(validate=validate.Length(1, MAX_STORE_ID_CHARS)),
                                  max_items=MAX_VECTOR_STORES, what="vector stores",
                                  load_default=None, allow_none=True)
    # Names of configured shields and of Llama Stack's shields (see lcore_core.shields).
    shield_ids = fields.List(fields.String(validate=validate.Length(1, 256)), load_default=None,
                             allow_none=True, validate=validate.Length(max=MAX_SHIELD_IDS))
    # Upstream's Solr search settings (mode, fq filters): accepted as null only, since LCore
    # searches OKP as a vector store and would otherwise ignore them.
    solr = fields.Raw(load_default=None, allow_none=True, metadata={
        "description": "Upstream's Solr inline RAG settings; LCore accepts only null"})

    @validates_schema
    def _pair(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("solr") is not None:
            raise ValidationError("Solr search settings (mode, filters) are not supported: "
                                  "LCore searches OKP as a vector store; leave solr out",
                                  "solr")
        # upstream's texts; a rule of the whole body (pydantic: loc ["body"])
        if data.get("model") and not data.get("provider"):
            raise ValidationError("Provider must be specified if model is specified")
        if data.get("provider") and not data.get("model"):
            raise ValidationError("Model must be specified if provider is specified")


class ReferencedDocumentSchema(Schema):
    doc_url = fields.String(allow_none=True)
    doc_title = fields.String(allow_none=True)
    source = fields.String(allow_none=True, metadata={
        "description": "The knowledge source (rag_id) the document was found in"})
    document_id = fields.String(allow_none=True)


class RAGChunkSchema(Schema):
    content = fields.String(required=True)
    source = fields.String(allow_none=True, metadata={
        "description": "The knowledge source (rag_id) the chunk came from"})
    score = fields.Float(allow_none=True)
    attributes = fields.Dict(allow_none=True, metadata={
        "description": "The chunk's metadata in its vector store (title, links, ids)"})


class ToolCallSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    args = fields.Dict(required=True)
    type = fields.String(required=True)


class ToolResultSchema(Schema):
    id = fields.String(required=True)
    status = fields.String(required=True)
    content = fields.Raw(allow_none=True)
    type = fields.String(required=True)
    round = fields.Integer(required=True)


class QueryResponseSchema(Schema):
    conversation_id = fields.String(allow_none=True)
    response = fields.String(required=True)
    rag_chunks = fields.List(fields.Nested(RAGChunkSchema))
    referenced_documents = fields.List(fields.Nested(ReferencedDocumentSchema))
    truncated = fields.Boolean()
    input_tokens = fields.Integer()
    output_tokens = fields.Integer()
    # LCore addition: true when the provider reported no usage and the counts are estimated.
    tokens_estimated = fields.Boolean()
    available_quotas = fields.Dict(keys=fields.String(), values=fields.Integer())
    tool_calls = fields.List(fields.Nested(ToolCallSchema))
    tool_results = fields.List(fields.Nested(ToolResultSchema))


# --- /v1/responses (OpenAI's Responses API, with upstream's additions) ---------------------

# Bounds of what a client controls. The whole body: upstream's 65,536 characters.
RESPONSES_MAX_BODY = 65_536
RESPONSES_MAX_INPUT_ITEMS = 128
RESPONSES_MAX_TOOLS = 32
RESPONSES_MAX_LIST = 32  # shield_ids, include, a file_search tool's vector_store_ids
RESPONSES_MAX_INSTRUCTIONS = 32_768
RESPONSES_MAX_METADATA_KEYS = 16  # OpenAI's limits: 16 pairs, keys 64 and values 512 chars
RESPONSES_MAX_ID = 256
# A response id (previous_response_id).
RESPONSE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}$"
TOOL_CHOICE_MODES = ("auto", "required", "none")
# What `include` may ask for (upstream's IncludeParameter)
RESPONSES_INCLUDE = ("web_search_call.action.sources", "code_interpreter_call.outputs",
                     "computer_call_output.output.image_url", "file_search_call.results",
                     "message.input_image.image_url", "message.output_text.logprobs")


class ResponseInputField(fields.Field):
    """`input`: a string, or a list of input items (messages, tool outputs...) as objects."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValidationError("must not be empty")
            return value
        # Neither branch of the union: pydantic's errors name each (`input.str`, then the
        # list's), and upstream's clients look for the first.
        if not isinstance(value, list):
            raise ValidationError({"str": ["Not a valid string."], "list": ["Not a valid list."]})
        if not value:
            raise ValidationError("must not be an empty list")
        if len(value) > RESPONSES_MAX_INPUT_ITEMS:
            raise ValidationError(f"at most {RESPONSES_MAX_INPUT_ITEMS} input items are "
                                  f"accepted, got {len(value)}")
        for number, item in enumerate(value):
            if not isinstance(item, dict):
                raise ValidationError({"str": ["Not a valid string."],
                                       number: ["an input item must be an object"]})
            kind = item.get("type", "message")
            if not isinstance(kind, str):
                raise ValidationError(f"item {number}: type must be a string")
            if kind == "message" and item.get("role") not in (
                    "user", "assistant", "system", "developer"):
                raise ValidationError(f"item {number}: a message needs a role (user, "
                                      "assistant, system or developer)")
        return value


class ToolChoiceField(fields.Field):
    """`tool_choice`: "auto", "required", "none", or an object naming the tool(s)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and value in TOOL_CHOICE_MODES:
            return value
        if isinstance(value, dict) and isinstance(value.get("type"), str):
            return value
        raise ValidationError(f"must be one of {', '.join(TOOL_CHOICE_MODES)} or an object "
                              "with a type")


class ResponsesToolSchema(Schema):
    """One tool a request offers; fields other than these are passed to Llama Stack as given."""

    class Meta:
        unknown = INCLUDE

    type = fields.String(required=True, validate=validate.Length(1, 64))
    server_label = fields.String(validate=validate.Length(1, RESPONSES_MAX_ID))
    vector_store_ids = fields.List(fields.String(validate=validate.Length(1, RESPONSES_MAX_ID)),
                                   validate=validate.Length(max=RESPONSES_MAX_LIST))


def _metadata(value: dict[str, Any]) -> None:
    if len(value) > RESPONSES_MAX_METADATA_KEYS:
        raise ValidationError(f"at most {RESPONSES_MAX_METADATA_KEYS} keys")
    for key, item in value.items():
        if len(key) > 64 or len(item) > 512:
            raise ValidationError("keys are at most 64 and values at most 512 characters")


class ResponsesRequestSchema(Schema):
    """`POST /v1/responses`: OpenAI's fields, plus upstream's `generate_topic_summary`,
    `shield_ids` and `solr`. An unknown field is refused (422), as upstream does."""

    input = ResponseInputField(required=True, metadata={
        "description": "A string, or a list of input items",
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"},
                                        "maxItems": RESPONSES_MAX_INPUT_ITEMS}]})
    model = fields.String(load_default=None, allow_none=True,
                          validate=validate.Length(1, RESPONSES_MAX_ID),
                          metadata={"description": "provider/model; needs model_override"})
    conversation = fields.String(
        load_default=None, allow_none=True,
        validate=validate.Regexp(CONVERSATION_ID_PATTERN, error=IMPROPER_CONVERSATION_ID))
    include = fields.List(fields.String(validate=validate.OneOf(RESPONSES_INCLUDE)),
                          load_default=None, allow_none=True,
                          validate=validate.Length(max=RESPONSES_MAX_LIST))
    instructions = fields.String(load_default=None, allow_none=True,
                                 validate=validate.Length(max=RESPONSES_MAX_INSTRUCTIONS))
    max_infer_iters = fields.Integer(load_default=None, allow_none=True,
                                     validate=validate.Range(1, 100))
    max_output_tokens = fields.Integer(load_default=None, allow_none=True,
                                       validate=validate.Range(1, 1_000_000))
    max_tool_calls = fields.Integer(load_default=None, allow_none=True,
                                    validate=validate.Range(1, 1000))
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), load_default=None,
                           allow_none=True, validate=_metadata)
    parallel_tool_calls = fields.Boolean(load_default=None, allow_none=True)
    previous_response_id = fields.String(
        load_default=None, allow_none=True,
        validate=validate.Regexp(RESPONSE_ID_PATTERN, error="malformed response id"))
    prompt = fields.Dict(load_default=None, allow_none=True)
    reasoning = fields.Dict(load_default=None, allow_none=True,
                            metadata={"description": "Accepted and ignored, as upstream does"})
    safety_identifier = fields.String(load_default=None, allow_none=True,
                                      validate=validate.Length(max=64))
    store = fields.Boolean(load_default=True)
    stream = fields.Boolean(load_default=False)
    temperature = fields.Float(load_default=None, allow_none=True,
                               validate=validate.Range(0.0, 2.0))
    text = fields.Dict(load_default=None, allow_none=True)
    tool_choice = ToolChoiceField(load_default=None, allow_none=True)
    tools = fields.List(fields.Nested(ResponsesToolSchema), load_default=None, allow_none=True,
                        validate=validate.Length(max=RESPONSES_MAX_TOOLS))
    generate_topic_summary = fields.Boolean(load_default=True, allow_none=True)
    shield_ids = fields.List(fields.String(validate=validate.Length(1, RESPONSES_MAX_ID)),
                             load_default=None, allow_none=True,
                             validate=validate.Length(max=RESPONSES_MAX_LIST))
    solr = fields.Dict(load_default=None, allow_none=True,
                       metadata={"description": "Accepted for upstream clients; LCore has no "
                                                "Solr source and ignores it"})

    @validates_schema
    def _one_context(self, data: dict[str, Any], **_: Any) -> None:
        # upstream's texts and places
        if data.get("conversation") and data.get("previous_response_id"):
            raise ValidationError("`conversation` and `previous_response_id` are mutually "
                                  "exclusive. Only one can be provided at a time.")
        if (data.get("previous_response_id") or "").startswith("modr"):
            raise ValidationError("You cannot provide context by moderation response.",
                                  "previous_response_id")


class ResponsesUsageSchema(Schema):
    class Meta:
        unknown = INCLUDE

    input_tokens = fields.Integer()
    output_tokens = fields.Integer()
    total_tokens = fields.Integer()


class ResponsesResponseSchema(Schema):
    """OpenAI's response object as Llama Stack made it, with upstream's additions
    (`conversation`, `available_quotas`, `output_text`, `completed_at`)."""

    class Meta:
        unknown = INCLUDE

    id = fields.String(required=True)
    object = fields.String(required=True, metadata={"enum": ["response"]})
    created_at = fields.Integer(required=True)
    completed_at = fields.Integer(allow_none=True)
    model = fields.String(required=True)
    status = fields.String(required=True)
    output = fields.List(fields.Dict(), required=True)
    usage = fields.Nested(ResponsesUsageSchema, allow_none=True)
    instructions = fields.String(allow_none=True)
    previous_response_id = fields.String(allow_none=True)
    tools = fields.List(fields.Dict(), allow_none=True)
    store = fields.Boolean(allow_none=True)
    safety_identifier = fields.String(allow_none=True)
    conversation = fields.String(allow_none=True)
    available_quotas = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    output_text = fields.String(required=True)
    # OpenAI's request settings echoed back, and the error of a failed response.
    error = fields.Dict(allow_none=True)
    max_output_tokens = fields.Integer(allow_none=True)
    max_tool_calls = fields.Integer(allow_none=True)
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), allow_none=True)
    parallel_tool_calls = fields.Boolean(allow_none=True)
    prompt = fields.Dict(allow_none=True)
    reasoning = fields.Dict(allow_none=True)
    temperature = fields.Float(allow_none=True)
    text = fields.Dict(allow_none=True)
    tool_choice = fields.Raw(allow_none=True)
    top_p = fields.Float(allow_none=True)
    truncation = fields.String(allow_none=True)

    # Fields every answer carries, null when Llama Stack gave none (upstream's model has them all).
    OPTIONAL = ("completed_at", "usage", "instructions", "previous_response_id", "tools",
                "store", "error", "max_output_tokens", "max_tool_calls", "metadata",
                "parallel_tool_calls", "prompt", "reasoning", "temperature", "text",
                "tool_choice", "top_p", "truncation")
