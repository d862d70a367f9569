"""Vector stores and file uploads, passed on to Llama Stack (upstream's routes and JSON shapes).

Upload a file (`POST /v1/files`), create a store, attach the file to it, and name the store in
a query's `vector_store_ids`: the file_search tool then searches it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable
from typing import Any

import structlog
from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)
from quart import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from lcore_core import validation
from lcore_core.auth import Action, authorize
from lcore_core.errors import (
    BadRequest,
    LCoreError,
    NotFound,
    PayloadTooLarge,
    UnprocessableEntity,
)
from lcore_core.llama import call_llama as _call
from lcore_core.schemas import LaxInteger
from lcore_core.web import doc, load_body, route

bp = Blueprint("vector_stores", __name__)
log = structlog.get_logger("lcore.vector_stores")

# Bounds on what a client sends. Attribute limits are upstream's (and OpenAI's); metadata gets
# the same shape of limit, as upstream sets none and Llama Stack stores whatever it is given.
MAX_NAME = 256
MAX_ID = 256
MAX_PAIRS = 16
MAX_KEY = 64
MAX_VALUE = 512
MAX_CHUNKING_JSON = 1024
MAX_EMBEDDING_DIMENSION = 65536
MAX_FILENAME = 255
MAX_PAGE = 100
# A file part and a few plain fields; more parts than this is not an upload of one file.
MAX_FORM_PARTS = 8
DEFAULT_FILENAME = "uploaded_file"
PURPOSE = "assistants"

# Ids Llama Stack hands out (vs_<uuid>, file-<hex>): anything else cannot name a store or file,
# and passed on (spaces, control characters) it would break the request line.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,255}$")


# --- request shapes ---------------------------------------------------------------------


def _check_pairs(value: dict[str, Any], what: str, *, scalar_values: bool) -> None:
    if len(value) > MAX_PAIRS:
        raise ValidationError(f"{what} can have at most {MAX_PAIRS} pairs, got {len(value)}")
    for key, item in value.items():
        if len(key) > MAX_KEY:
            raise ValidationError(f"{what} key {key[:80]!r} exceeds {MAX_KEY} characters")
        if scalar_values:
            if not isinstance(item, str | int | float | bool):
                raise ValidationError(f"{what} value for {key!r} must be a string, a number "
                                      f"or a boolean")
            if isinstance(item, str) and len(item) > MAX_VALUE:
                raise ValidationError(f"{what} value for {key!r} exceeds {MAX_VALUE} characters")
        elif len(json.dumps(item)) > MAX_VALUE:
            raise ValidationError(f"{what} value for {key!r} exceeds {MAX_VALUE} characters "
                                  f"as JSON")


def _check_chunking(value: dict[str, Any]) -> None:
    # Llama Stack validates the strategy itself (a 400 naming the bad part); LCore only bounds it.
    if not isinstance(value.get("type"), str):
        raise ValidationError("chunking_strategy needs a string 'type' (auto, static, ...)")
    if len(json.dumps(value)) > MAX_CHUNKING_JSON:
        raise ValidationError(f"chunking_strategy exceeds {MAX_CHUNKING_JSON} characters as JSON")


def _optional_text(limit: int, **kwargs: Any) -> fields.String:
    return fields.String(load_default=None, allow_none=True,
                         validate=validate.Length(1, limit), **kwargs)


class VectorStoreCreateRequestSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(1, MAX_NAME))
    embedding_model = _optional_text(MAX_NAME)
    embedding_dimension = LaxInteger(
        load_default=None, allow_none=True,
        validate=validate.Range(0, MAX_EMBEDDING_DIMENSION, min_inclusive=False))
    chunking_strategy = fields.Dict(keys=fields.String(), load_default=None, allow_none=True)
    provider_id = _optional_text(MAX_NAME)
    metadata = fields.Dict(keys=fields.String(), load_default=None, allow_none=True)

    @validates("metadata")
    def _metadata(self, value: dict[str, Any] | None, **_: Any) -> None:
        if value is not None:
            _check_pairs(value, "metadata", scalar_values=False)

    @validates("chunking_strategy")
    def _chunking(self, value: dict[str, Any] | None, **_: Any) -> None:
        if value is not None:
            _check_chunking(value)


class VectorStoreUpdateRequestSchema(Schema):
    name = _optional_text(MAX_NAME)
    expires_at = LaxInteger(load_default=None, allow_none=True,
                        validate=validate.Range(0, min_inclusive=False))
    metadata = fields.Dict(keys=fields.String(), load_default=None, allow_none=True)

    @validates("metadata")
    def _metadata(self, value: dict[str, Any] | None, **_: Any) -> None:
        if value is not None:
            _check_pairs(value, "metadata", scalar_values=False)

    @validates_schema
    def _something(self, data: dict[str, Any], **_: Any) -> None:
        if all(data.get(k) is None for k in ("name", "expires_at", "metadata")):
            raise ValidationError("At least one field must be provided: name, expires_at, "
                                  "or metadata")


class VectorStoreFileCreateRequestSchema(Schema):
    file_id = fields.String(required=True, validate=validate.Length(1, MAX_ID))
    attributes = fields.Dict(keys=fields.String(), load_default=None, allow_none=True)
    chunking_strategy = fields.Dict(keys=fields.String(), load_default=None, allow_none=True)

    @validates("attributes")
    def _attributes(self, value: dict[str, Any] | None, **_: Any) -> None:
        if value is not None:
            _check_pairs(value, "attributes", scalar_values=True)

    @validates("chunking_strategy")
    def _chunking(self, value: dict[str, Any] | None, **_: Any) -> None:
        if value is not None:
            _check_chunking(value)


class FileUploadSchema(Schema):
    """The multipart body of `POST /v1/files` (documentation only: the view reads the form)."""

    class Meta:
        # Other form fields (an OpenAI client's `purpose`) are ignored, as upstream does; other
        # file parts get a 422.
        unknown = EXCLUDE

    file = fields.Raw(required=True, metadata={"type": "string", "format": "binary"})


class PageQuerySchema(Schema):
    """LCore addition: one page of a list (upstream returns Llama Stack's first page)."""

    limit = fields.Integer(load_default=None, validate=validate.Range(1, MAX_PAGE),
                           metadata={"description": f"page size, 1 to {MAX_PAGE}"})
    after = fields.String(load_default=None, validate=validate.Regexp(_ID),
                          metadata={"description": "the last id of the previous page"})
    before = fields.String(load_default=None, validate=validate.Regexp(_ID))
    order = fields.String(load_default=None, validate=validate.OneOf(["asc", "desc"]))


# --- response shapes --------------------------------------------------------------------


class VectorStoreSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    created_at = fields.Integer(required=True)
    last_active_at = fields.Integer(allow_none=True)
    expires_at = fields.Integer(allow_none=True)
    status = fields.String(required=True)
    usage_bytes = fields.Integer(required=True)
    metadata = fields.Dict(allow_none=True)


class _PageSchema(Schema):
    object = fields.String(required=True)
    # LCore additions, for paging with `limit` and `after`.
    first_id = fields.String(allow_none=True)
    last_id = fields.String(allow_none=True)
    has_more = fields.Boolean()


class VectorStoreListSchema(_PageSchema):
    data = fields.List(fields.Nested(VectorStoreSchema), required=True)


class VectorStoreDeleteSchema(Schema):
    vector_store_id = fields.String(required=True)
    deleted = fields.Boolean(required=True)
    response = fields.String(required=True)


class FileSchema(Schema):
    id = fields.String(required=True)
    filename = fields.String(required=True)
    bytes = fields.Integer(required=True)
    created_at = fields.Integer(required=True)
    purpose = fields.String(required=True)
    object = fields.String(required=True)


class VectorStoreFileSchema(Schema):
    id = fields.String(required=True)
    vector_store_id = fields.String(required=True)
    status = fields.String(required=True)
    attributes = fields.Dict(allow_none=True)
    last_error = fields.String(allow_none=True)
    object = fields.String(required=True)


class VectorStoreFileListSchema(_PageSchema):
    data = fields.List(fields.Nested(VectorStoreFileSchema), required=True)


class VectorStoreFileDeleteSchema(Schema):
    file_id = fields.String(required=True)
    deleted = fields.Boolean(required=True)
    response = fields.String(required=True)


# --- helpers ----------------------------------------------------------------------------

_UNAVAILABLE = "Llama Stack unavailable"


def _client() -> Any:
    return current_app.runtime.llama.client  # type: ignore[attr-defined]


def _not_found(resource: str, resource_id: str) -> NotFound:
    """Upstream's wording: "Vector Store not found" / "... with ID x does not exist"."""
    return NotFound.of(resource, resource_id)


def _known(resource: str, resource_id: str) -> None:
    """An id Llama Stack could not have issued names nothing: 404 without asking it."""
    if not _ID.match(resource_id):
        raise _not_found(resource, resource_id[:80])


def _value(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _store(vs: Any) -> dict[str, Any]:
    return {"id": _value(vs, "id"), "name": _value(vs, "name") or "",
            "created_at": _value(vs, "created_at"),
            "last_active_at": _value(vs, "last_active_at"),
            "expires_at": _value(vs, "expires_at") or None,
            "status": _value(vs, "status") or "unknown",
            "usage_bytes": _value(vs, "usage_bytes") or 0,
            "metadata": _value(vs, "metadata")}


def _store_file(vs_file: Any, vector_store_id: str) -> dict[str, Any]:
    error = _value(vs_file, "last_error")
    return {"id": _value(vs_file, "id"),
            "vector_store_id": _value(vs_file, "vector_store_id") or vector_store_id,
            "status": _value(vs_file, "status") or "unknown",
            "attributes": _value(vs_file, "attributes"),
            "last_error": _value(error, "message") if error else None,
            "object": _value(vs_file, "object") or "vector_store.file"}


def _page(page: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"data": items, "object": "list", "first_id": _value(page, "first_id"),
            "last_id": _value(page, "last_id"), "has_more": bool(_value(page, "has_more"))}


def _page_query() -> dict[str, Any]:
    args = request.args.to_dict()
    try:
        query = PageQuerySchema().load(args)
    except ValidationError as exc:
        raise validation.invalid(exc.messages, args, "query") from None
    return {k: v for k, v in query.items() if v is not None}


def _present(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


# --- vector stores ----------------------------------------------------------------------


@route(bp, "/v1/vector-stores", methods=["POST"])
@doc(summary="Create a vector store", tags=["vector-stores"],
     body=VectorStoreCreateRequestSchema,
     responses={200: VectorStoreSchema, 400: "Llama Stack rejected the parameters",
                503: _UNAVAILABLE})
@authorize(Action.MANAGE_VECTOR_STORES)
async def create_vector_store() -> Any:
    body = _present(await load_body(VectorStoreCreateRequestSchema))
    # Not parameters of the client's `create`: Llama Stack reads them from the body.
    extra = {k: body.pop(k) for k in ("provider_id", "embedding_model", "embedding_dimension")
             if k in body}
    store = await _call("vector_stores.create", lambda: _client().vector_stores.create(
        **body, extra_body=extra or None))
    return jsonify(_store(store))


@route(bp, "/v1/vector-stores")
@doc(summary="List vector stores (one page)", tags=["vector-stores"], query=PageQuerySchema,
     responses={200: VectorStoreListSchema, 422: "Invalid page parameters",
                503: _UNAVAILABLE})
@authorize(Action.READ_VECTOR_STORES)
async def list_vector_stores() -> Any:
    query = _page_query()
    page = await _call("vector_stores.list", lambda: _client().vector_stores.list(**query))
    return jsonify(_page(page, [_store(vs) for vs in page.data]))


@route(bp, "/v1/vector-stores/<vector_store_id>")
@doc(summary="One vector store", tags=["vector-stores"],
     responses={200: VectorStoreSchema, 404: "Unknown vector store", 503: _UNAVAILABLE})
@authorize(Action.READ_VECTOR_STORES)
async def get_vector_store(vector_store_id: str) -> Any:
    _known("Vector Store", vector_store_id)
    store = await _call("vector_stores.retrieve",
                        lambda: _client().vector_stores.retrieve(vector_store_id),
                        lambda _: _not_found("Vector Store", vector_store_id))
    return jsonify(_store(store))


@route(bp, "/v1/vector-stores/<vector_store_id>", methods=["PUT"])
@doc(summary="Rename a vector store or replace its metadata", tags=["vector-stores"],
     body=VectorStoreUpdateRequestSchema,
     responses={200: VectorStoreSchema, 404: "Unknown vector store", 503: _UNAVAILABLE})
@authorize(Action.MANAGE_VECTOR_STORES)
async def update_vector_store(vector_store_id: str) -> Any:
    body = _present(await load_body(VectorStoreUpdateRequestSchema))
    _known("Vector Store", vector_store_id)
    # Upstream passes `expires_at` on; the 0.7 client has no such parameter (and Llama Stack
    # 0.7 keeps the store's own expiry), so it goes in the body as upstream sends it.
    extra = {"expires_at": body.pop("expires_at")} if "expires_at" in body else None
    store = await _call("vector_stores.update", lambda: _client().vector_stores.update(
        vector_store_id, **body, extra_body=extra),
        lambda _: _not_found("Vector Store", vector_store_id))
    return jsonify(_store(store))


@route(bp, "/v1/vector-stores/<vector_store_id>", methods=["DELETE"])
@doc(summary="Delete a vector store (200 with deleted: false when unknown)",
     tags=["vector-stores"], responses={200: VectorStoreDeleteSchema, 503: _UNAVAILABLE})
@authorize(Action.MANAGE_VECTOR_STORES)
async def delete_vector_store(vector_store_id: str) -> Any:
    deleted = False
    if _ID.match(vector_store_id):
        with contextlib.suppress(_Gone):
            await _call("vector_stores.delete",
                        lambda: _client().vector_stores.delete(vector_store_id), _gone)
            deleted = True
    return jsonify({"vector_store_id": vector_store_id, "deleted": deleted,
                    "response": "Vector store deleted successfully" if deleted
                    else "Vector store not found"})


class _Gone(LCoreError):
    """What delete was asked to remove is not there (upstream answers 200, deleted: false)."""


def _gone(_: LCoreError) -> LCoreError:
    return _Gone("not found")


# --- files ------------------------------------------------------------------------------


@route(bp, "/v1/files", methods=["POST"])
@doc(summary="Upload a file (multipart/form-data, one part named 'file')",
     tags=["vector-stores"], body=FileUploadSchema, body_content_type="multipart/form-data",
     responses={200: FileSchema, 400: "Llama Stack rejected the file",
                413: "File larger than service.max_request_size",
                422: "No file part, more than one, or a bad file name", 503: _UNAVAILABLE})
@authorize(Action.MANAGE_FILES)
async def create_file() -> Any:
    limit = int(current_app.config["MAX_CONTENT_LENGTH"])
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request.content_length, limit)
    if request.mimetype != "multipart/form-data":
        raise UnprocessableEntity("Invalid request", "expected a multipart/form-data body with "
                                  f"one part named 'file', got {request.mimetype or 'none'}")
    try:
        # The whole body first, held to service.max_request_size: a parse error after this can
        # only be the number of parts.
        await request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge("File too large", f"File size exceeds maximum allowed size of "
                              f"{limit} bytes ({limit // (1024 * 1024)} MB)") from None
    request.max_form_parts = MAX_FORM_PARTS
    try:
        files = await request.files
    except RequestEntityTooLarge:
        raise PayloadTooLarge("Too many form parts", f"the multipart body has more than "
                              f"{MAX_FORM_PARTS} parts; send one part named 'file'") from None
    parts = files.getlist("file")
    if len(parts) != 1 or len(files) != 1:
        raise UnprocessableEntity("Invalid request", "send exactly one file, in a part named "
                                  f"'file' (got {len(parts)} such parts and "
                                  f"{len(files) - len(parts)} other file parts)")
    upload = parts[0]
    filename = _filename(upload.filename)
    content = upload.read()
    if len(content) > limit:
        raise _too_large(len(content), limit)
    data = io.BytesIO(content)
    data.name = filename  # library mode only takes a file object with a name
    log.info("uploading file", filename=filename, bytes=len(content))
    def send() -> Any:
        data.seek(0)  # a retry sends the whole file again
        return _client().files.create(file=data, purpose=PURPOSE)

    created = await _call("files.create", send, _rejected)
    return jsonify({"id": _value(created, "id"),
                    "filename": _value(created, "filename") or filename,
                    "bytes": _value(created, "bytes") or len(content),
                    "created_at": _value(created, "created_at"),
                    "purpose": _value(created, "purpose") or PURPOSE,
                    "object": _value(created, "object") or "file"})


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge("File too large", f"File size {size} bytes exceeds maximum allowed "
                           f"size of {limit} bytes ({limit // (1024 * 1024)} MB)")


def _filename(given: str | None) -> str:
    name = (given or "").strip() or DEFAULT_FILENAME
    if len(name) > MAX_FILENAME:
        raise UnprocessableEntity("Invalid request",
                                  f"file name is longer than {MAX_FILENAME} characters")
    if any(ord(c) < 32 or c in "/\\" for c in name):
        raise UnprocessableEntity("Invalid request",
                                  "file name contains a path separator or control character")
    # Without an extension Llama Stack cannot tell the content type; uploads here are text
    # (parsed documents), as upstream assumes.
    return name if "." in name.lstrip(".") else f"{name}.txt"


def _rejected(exc: LCoreError) -> LCoreError:
    said = exc.cause
    if any(word in said.lower() for word in ("too large", "size", "exceeds")):
        return PayloadTooLarge("Invalid file upload", f"File upload rejected: {said}")
    return BadRequest("Invalid file upload", f"File upload rejected by Llama Stack: {said}")


# --- files in a vector store ------------------------------------------------------------


@route(bp, "/v1/vector-stores/<vector_store_id>/files", methods=["POST"])
@doc(summary="Add an uploaded file to a vector store", tags=["vector-stores"],
     body=VectorStoreFileCreateRequestSchema,
     responses={200: VectorStoreFileSchema, 404: "Unknown vector store or file",
                503: _UNAVAILABLE})
@authorize(Action.MANAGE_VECTOR_STORES)
async def add_file_to_vector_store(vector_store_id: str) -> Any:
    body = _present(await load_body(VectorStoreFileCreateRequestSchema))
    file_id = body["file_id"]
    _known("Vector Store", vector_store_id)
    _known("File", file_id)
    client = _client()
    # Llama Stack 0.7 accepts an unknown file id and records a failed entry in the store:
    # asking for the file first gives upstream's 404 and leaves the store clean.
    await _call("files.retrieve", lambda: client.files.retrieve(file_id),
                lambda _: _not_found("File", file_id))
    vs_file = await _call("vector_stores.files.create", lambda: client.vector_stores.files.create(
        vector_store_id=vector_store_id, **body), _store_or_file(vector_store_id, file_id))
    log.info("file added to vector store", vector_store_id=vector_store_id, file_id=file_id,
             status=_value(vs_file, "status"))
    return jsonify(_store_file(vs_file, vector_store_id))


def _store_or_file(vector_store_id: str, file_id: str) -> Callable[[LCoreError], LCoreError | None]:
    def missing(exc: LCoreError) -> LCoreError | None:
        said = exc.cause.lower()
        if "not found" not in said and not isinstance(exc, NotFound):
            return None  # a bad chunking strategy or attribute: Llama Stack's own 400
        if "vector_store" in said or "vector store" in said or vector_store_id.lower() in said:
            return _not_found("Vector Store", vector_store_id)
        return _not_found("File", file_id)

    return missing


@route(bp, "/v1/vector-stores/<vector_store_id>/files")
@doc(summary="The files of a vector store (one page)", tags=["vector-stores"],
     query=PageQuerySchema,
     responses={200: VectorStoreFileListSchema, 404: "Unknown vector store",
                422: "Invalid page parameters", 503: _UNAVAILABLE})
@authorize(Action.READ_VECTOR_STORES)
async def list_vector_store_files(vector_store_id: str) -> Any:
    query = _page_query()
    _known("Vector Store", vector_store_id)
    page = await _call("vector_stores.files.list", lambda: _client().vector_stores.files.list(
        vector_store_id=vector_store_id, **query),
        lambda _: _not_found("Vector Store", vector_store_id))
    return jsonify(_page(page, [_store_file(f, vector_store_id) for f in page.data]))


@route(bp, "/v1/vector-stores/<vector_store_id>/files/<file_id>")
@doc(summary="One file of a vector store", tags=["vector-stores"],
     responses={200: VectorStoreFileSchema, 404: "Unknown vector store or file",
                503: _UNAVAILABLE})
@authorize(Action.READ_VECTOR_STORES)
async def get_vector_store_file(vector_store_id: str, file_id: str) -> Any:
    _known("File", file_id)
    _known("File", vector_store_id)
    vs_file = await _call("vector_stores.files.retrieve",
                          lambda: _client().vector_stores.files.retrieve(
                              vector_store_id=vector_store_id, file_id=file_id),
                          lambda _: _not_found("File", file_id))
    return jsonify(_store_file(vs_file, vector_store_id))


@route(bp, "/v1/vector-stores/<vector_store_id>/files/<file_id>", methods=["DELETE"])
@doc(summary="Remove a file from a vector store (200 with deleted: false when unknown)",
     tags=["vector-stores"], responses={200: VectorStoreFileDeleteSchema, 503: _UNAVAILABLE})
@authorize(Action.MANAGE_VECTOR_STORES)
async def delete_vector_store_file(vector_store_id: str, file_id: str) -> Any:
    deleted = False
    if _ID.match(vector_store_id) and _ID.match(file_id):
        with contextlib.suppress(_Gone):
            await _call("vector_stores.files.delete", lambda: _client().vector_stores.files.delete(
                vector_store_id=vector_store_id, file_id=file_id), _gone)
            deleted = True
    return jsonify({"file_id": file_id, "deleted": deleted,
                    "response": "Vector store file deleted successfully" if deleted
                    else "Vector store file not found"})
