"""`POST /v1/infer` request and response shapes (upstream's rlsapi v1 JSON), for validation and
the OpenAPI document."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates

from lcore_core.schemas import (
    RAGChunkSchema,
    ReferencedDocumentSchema,
    ToolCallSchema,
    ToolResultSchema,
)

# Upstream's limits.
MAX_QUESTION_CHARS = 32_768
MAX_CONTEXT_CHARS = 65_536
# Upstream leaves these unbounded; they end up in logs and telemetry, so LCore bounds them.
MAX_SHORT_CHARS = 256

# Upstream's character sets for the fields that flow into telemetry.
SAFE_TEXT = r"^[a-zA-Z0-9._ \-]*$"
MACHINE_ID = r"^[a-zA-Z0-9._\-]*$"
NEVRA = r"^[a-zA-Z0-9._:+~\-]*$"


def _text(max_chars: int, pattern: str | None = None, **kwargs: Any) -> fields.String:
    checks: list[Any] = [validate.Length(max=max_chars)]
    if pattern is not None:
        checks.append(validate.Regexp(pattern, error="contains characters that are not allowed"))
    return fields.String(load_default="", validate=checks, **kwargs)


class _Strict(Schema):
    # Upstream forbids unknown fields at every level.
    class Meta:
        unknown = RAISE


def _nested(schema: type[Schema]) -> fields.Nested:
    return fields.Nested(schema, load_default=lambda: schema().load({}))


class RlsapiV1AttachmentSchema(_Strict):
    contents = _text(MAX_CONTEXT_CHARS, metadata={"description": "a file read on the client"})
    mimetype = _text(MAX_SHORT_CHARS)


class RlsapiV1TerminalSchema(_Strict):
    output = _text(MAX_CONTEXT_CHARS, metadata={"description": "the client's terminal output"})


class RlsapiV1SystemInfoSchema(_Strict):
    os = _text(MAX_SHORT_CHARS, SAFE_TEXT)
    version = _text(MAX_SHORT_CHARS, SAFE_TEXT)
    arch = _text(MAX_SHORT_CHARS, SAFE_TEXT)
    system_id = _text(MAX_SHORT_CHARS, MACHINE_ID, data_key="id",
                      metadata={"description": "the client machine's id"})

    @pre_load
    def _by_name(self, data: Any, **_: Any) -> Any:
        # Upstream also takes the field's own name, `system_id`, for `id`.
        if isinstance(data, dict) and "system_id" in data and "id" not in data:
            data = dict(data)
            data["id"] = data.pop("system_id")
        return data


class RlsapiV1CLASchema(_Strict):
    nevra = _text(MAX_SHORT_CHARS, NEVRA)
    version = _text(MAX_SHORT_CHARS, MACHINE_ID)


class RlsapiV1ContextSchema(_Strict):
    stdin = _text(MAX_CONTEXT_CHARS, metadata={"description": "input piped to the client"})
    attachments = _nested(RlsapiV1AttachmentSchema)
    terminal = _nested(RlsapiV1TerminalSchema)
    systeminfo = _nested(RlsapiV1SystemInfoSchema)
    cla = _nested(RlsapiV1CLASchema)


class RlsapiV1InferRequestSchema(_Strict):
    question = fields.String(required=True, validate=validate.Length(1, MAX_QUESTION_CHARS))
    context = _nested(RlsapiV1ContextSchema)
    skip_rag = fields.Boolean(load_default=False, metadata={
        "description": "accepted for compatibility; /v1/infer does no retrieval"})
    include_metadata = fields.Boolean(load_default=False, metadata={
        "description": "ask for tool calls, RAG chunks and token counts; honoured only when "
                       "rlsapi_v1.allow_verbose_infer is true"})

    @validates("question")
    def _not_blank(self, value: str, **_: Any) -> None:
        if not value.strip():
            raise ValidationError("Question cannot be empty or whitespace-only")


def input_text(body: dict[str, Any]) -> str:
    """What the LLM is asked: the question, then stdin, the attachment and the terminal output
    (upstream's order), each given part separated by a blank line."""
    context = body["context"]
    parts = [body["question"].strip(), context["stdin"], context["attachments"]["contents"],
             context["terminal"]["output"]]
    return "\n\n".join(part for part in parts if part)


class RlsapiV1InferDataSchema(Schema):
    text = fields.String(required=True)
    request_id = fields.String(allow_none=True)
    # Only with include_metadata (and allow_verbose_infer); absent otherwise.
    tool_calls = fields.List(fields.Nested(ToolCallSchema), allow_none=True)
    tool_results = fields.List(fields.Nested(ToolResultSchema), allow_none=True)
    rag_chunks = fields.List(fields.Nested(RAGChunkSchema), allow_none=True)
    referenced_documents = fields.List(fields.Nested(ReferencedDocumentSchema), allow_none=True)
    input_tokens = fields.Integer(allow_none=True)
    output_tokens = fields.Integer(allow_none=True)


class RlsapiV1InferResponseSchema(Schema):
    data = fields.Nested(RlsapiV1InferDataSchema, required=True)
