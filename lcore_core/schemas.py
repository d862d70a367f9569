"""Request and response shapes (upstream's JSON field names), used for validation and OpenAPI."""

from __future__ import annotations

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

CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
MAX_QUERY_CHARS = 100_000
MAX_SHIELD_IDS = 64
# Each vector store is one more search per query and each attachment more prompt: bounded, with
# repeats dropped. Upstream bounds neither list; these are far above what a client needs.
MAX_VECTOR_STORES = 16
MAX_ATTACHMENTS = 32
MAX_STORE_ID_CHARS = 256  # upstream's bound on a vector store id elsewhere in its API


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


class AttachmentSchema(Schema):
    attachment_type = fields.String(required=True, validate=validate.Length(1, 64))
    content_type = fields.String(required=True, validate=validate.Length(1, 128))
    content = fields.String(required=True)


class QueryRequestSchema(Schema):
    query = fields.String(required=True, validate=validate.Length(1, MAX_QUERY_CHARS))
    conversation_id = fields.String(
        load_default=None, allow_none=True,
        validate=validate.Regexp(CONVERSATION_ID_PATTERN, error="malformed conversation id"))
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

    @validates_schema
    def _pair(self, data: dict[str, Any], **_: Any) -> None:
        if bool(data.get("model")) != bool(data.get("provider")):
            raise ValidationError("model and provider must be given together",
                                  "provider" if data.get("model") else "model")


class ReferencedDocumentSchema(Schema):
    doc_url = fields.String(allow_none=True)
    doc_title = fields.String(allow_none=True)


class RAGChunkSchema(Schema):
    content = fields.String(required=True)
    source = fields.String(allow_none=True)
    score = fields.Float(allow_none=True)


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
