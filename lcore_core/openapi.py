"""The OpenAPI 3 document, generated from the routes' `doc` metadata and marshmallow schemas."""

from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from quart import Quart

from lcore_core.schemas import CONVERSATION_ID_PATTERN, ErrorSchema

_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_STATUS_TEXT = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
                413: "Request too large", 422: "Invalid body", 429: "Quota exceeded",
                500: "Internal error", 503: "Backend unavailable"}
# One entry of a 422 for a body or query string that fails validation (lcore_core.validation).
VALIDATION_ERROR = {
    "type": "object", "required": ["loc", "msg", "type"],
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
        "msg": {"type": "string"}, "type": {"type": "string"}, "input": {},
        "ctx": {"type": "object"}}}
# Path parameters the views validate (a malformed value is a 400): documented with their shape.
_PARAM_SCHEMAS = {"conversation_id": {"type": "string", "pattern": CONVERSATION_ID_PATTERN}}


def build_openapi(app: Quart, *, title: str, version: str, root_path: str = "") -> dict[str, Any]:
    # Behind a proxy that keeps a path prefix (`service.root_path`) the paths stay as routed
    # and the prefix is the server's URL, as upstream's document shows it.
    options: dict[str, Any] = {"servers": [{"url": root_path}]} if root_path else {}
    spec = APISpec(title=title, version=version, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()], **options)
    spec.components.schema("Error", schema=ErrorSchema)
    spec.components.schema("ValidationError", VALIDATION_ERROR)
    spec.components.schema("HTTPValidationError", {
        "type": "object", "properties": {"detail": {
            "type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}}})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "lcore_doc", None)
        if meta is None or "__alias" in rule.endpoint:
            continue
        path = _PARAM.sub(r"{\1}", rule.rule)
        operations = {}
        for method in sorted(m.lower() for m in rule.methods or () if m not in ("HEAD", "OPTIONS")):
            operations[method] = _operation(view, meta, rule, method)
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def _operation(view: Any, meta: dict[str, Any], rule: Any, method: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": meta["summary"],
        "operationId": f"{rule.endpoint.replace('.', '_')}_{method}",
        "responses": {},
    }
    if meta["tags"]:
        op["tags"] = meta["tags"]
    if meta["deprecated"]:
        op["deprecated"] = True
    aliases = getattr(view, "lcore_aliases", [])
    if aliases:
        op["x-aliases"] = [_PARAM.sub(r"{\1}", a) for a in aliases]
        op["description"] = "Also served at: " + ", ".join(op["x-aliases"])
    params = [{"name": p, "in": "path", "required": True,
               "schema": _PARAM_SCHEMAS.get(p, {"type": "string"})}
              for p in _PARAM.findall(rule.rule)]
    if meta.get("query") is not None:
        # apispec's marshmallow plugin expands this into one parameter per field.
        params.append({"in": "query", "schema": meta["query"]})
    if params:
        op["parameters"] = params
    if meta["body"] is not None:
        body_type = meta.get("body_content_type", "application/json")
        op["requestBody"] = {"required": True, "content": {body_type: {"schema": meta["body"]}}}
    types = meta["content_type"]
    types = [types] if isinstance(types, str) else list(types)
    for status, schema in meta["responses"].items():
        if isinstance(schema, str) and status >= 400:
            # An error described in words still has the error body's shape.
            body = _VALIDATION_OR_ERROR if status == 422 else _ERROR
            op["responses"][str(status)] = {"description": schema, "content": body}
        elif isinstance(schema, str):
            # A stream or a text page: its media types, each a string (as upstream)
            answer: dict[str, Any] = {"description": schema}
            if types != ["application/json"]:
                answer["content"] = {t: {"schema": {"type": "string"}} for t in types}
            op["responses"][str(status)] = answer
        elif status >= 400:
            op["responses"][str(status)] = {
                "description": _STATUS_TEXT.get(status, "OK"),
                "content": {"application/json": {"schema": schema}}}
        else:
            op["responses"][str(status)] = {
                "description": _STATUS_TEXT.get(status, "OK"),
                "content": {t: {"schema": schema if t == types[0] else {"type": "string"}}
                            for t in types}}
    if getattr(view, "lcore_action", None):
        op["security"] = [{"bearer": []}, {}]
        op["x-lcore-action"] = view.lcore_action
        for status in (401, 403):
            op["responses"].setdefault(str(status), _error_ref(status))
    if any(p.get("name") in _PARAM_SCHEMAS for p in params):
        op["responses"].setdefault("400", _error_ref(400))
    if meta["body"] is not None or meta.get("query") is not None:
        op["responses"].setdefault("422", {
            "description": "Invalid request: a list of the fields that fail validation, or an "
                           "error about a value the service refuses",
            "content": _VALIDATION_OR_ERROR})
    if meta["body"] is not None:
        for status in (400, 413):
            op["responses"].setdefault(str(status), _error_ref(status))
    return op


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_VALIDATION_OR_ERROR = {"application/json": {"schema": {"oneOf": [
    {"$ref": "#/components/schemas/HTTPValidationError"},
    {"$ref": "#/components/schemas/Error"}]}}}


def _error_ref(status: int) -> dict[str, Any]:
    return {"description": _STATUS_TEXT[status], "content": _ERROR}


DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} API</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}code{{background:#eee}}
h2{{border-bottom:1px solid #ccc}} .m{{display:inline-block;width:5em;font-weight:bold}}</style>
</head><body><h1>{title} API</h1>
<p>Machine-readable document: <a href="openapi.json"><code>/openapi.json</code></a>.</p>
{body}</body></html>"""


def render_docs(document: dict[str, Any]) -> str:
    """A dependency-free HTML listing of the OpenAPI document (no CDN: works offline)."""
    from html import escape

    rows = []
    for path, operations in sorted(document.get("paths", {}).items()):
        for method, op in operations.items():
            aliases = ", ".join(op.get("x-aliases", []))
            extra = f" <small>(also {escape(aliases)})</small>" if aliases else ""
            rows.append(f"<p><span class=m>{method.upper()}</span><code>{escape(path)}</code>"
                        f" {escape(op.get('summary', ''))}{extra}</p>")
    title = escape(document["info"]["title"])
    return DOCS_PAGE.format(title=title, body="\n".join(rows))
