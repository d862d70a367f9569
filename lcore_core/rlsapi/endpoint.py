"""`POST /v1/infer`: the stateless question-and-answer call of RHEL Lightspeed's command-line
assistant (upstream's rlsapi v1).

One Responses call through the query pipeline with `store: false`: no conversation, no cache, no
user DB row. Quota is metered only when `rlsapi_v1.quota_subject` is set, against the caller's
user id or the X-RH-Identity org id / system id. Each answer (and each refusal or failure) is
reported to Splunk HEC in the background when `splunk.enabled`.
"""

from __future__ import annotations

import functools
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import jinja2
import structlog
from jinja2.sandbox import SandboxedEnvironment
from quart import Blueprint, current_app, g, jsonify, request

from lcore_core import pipeline
from lcore_core.auth import Action, AuthTuple, authorize
from lcore_core.errors import (
    BackendUnavailable,
    LCoreError,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
)
from lcore_core.events import QuotaTicket
from lcore_core.llama import BACKEND_DOWN
from lcore_core.mcp import MCP_HEADERS, mcp_tools, parse_mcp_headers
from lcore_core.rh_identity import AUTH_DISABLED, identity_context
from lcore_core.rlsapi.schemas import (
    RlsapiV1InferRequestSchema,
    RlsapiV1InferResponseSchema,
    input_text,
)
from lcore_core.rlsapi.splunk import SplunkExporter, inference_event
from lcore_core.runtime import Runtime
from lcore_core.shields.selection import configured as configured_shields
from lcore_core.web import doc, load_body, route

bp = Blueprint("rlsapi_v1", __name__)
log = structlog.get_logger("lcore.rlsapi")

ENDPOINT = "/v1/infer"
SPLUNK_STATE = "lcore.splunk"
# Upstream's texts.
UNABLE_TO_PROCESS = "Unable to process this request"
SOURCETYPE_ANSWER = "infer_with_llm"
SOURCETYPE_BLOCKED = "infer_shield_blocked"
SOURCETYPE_ERROR = "infer_error"


class TemplateRenderError(LCoreError):
    """The system prompt is not a valid Jinja2 template (a configuration mistake: 500)."""

    status = 500


GENERIC_500 = ("Internal server error",
               "An unexpected error occurred while processing the request.")


def _generic_500() -> LCoreError:
    return LCoreError(*GENERIC_500)


def _template_error() -> TemplateRenderError:
    return TemplateRenderError(*GENERIC_500)


@route(bp, ENDPOINT, methods=["POST"])
@doc(summary="RHEL Lightspeed rlsapi v1: answer one question with its client context "
             "(stateless)", tags=["rlsapi-v1"], body=RlsapiV1InferRequestSchema,
     responses={200: RlsapiV1InferResponseSchema,
                404: "The configured default model does not exist",
                413: "The input exceeds the model's context window",
                429: "Quota exceeded (LCore's limiters or the model provider's rate limit)",
                500: "Invalid system prompt template or an unexpected inference error",
                503: "Llama Stack unreachable, or it serves no LLM"})
@authorize(Action.RLSAPI_V1_INFER)
async def infer() -> Any:
    runtime: Runtime = current_app.runtime  # type: ignore[attr-defined]
    body = await load_body(RlsapiV1InferRequestSchema)
    auth: AuthTuple = g.auth
    request_id = str(uuid.uuid4())
    report = _Report(runtime, body, request_id)
    ticket = QuotaTicket(query=input_text(body), endpoint=ENDPOINT)
    subject = quota_subject(runtime.config.rlsapi_v1.quota_subject, auth)
    if subject is None:
        ticket.settled = True  # not metered: nothing to consume or give back
    else:
        await runtime.plugins.quota_check(subject, ticket, runtime)
    try:
        plan = await _plan(runtime, auth, body, subject, ticket)
    except BaseException:
        await pipeline.release(runtime, subject or auth, ticket)
        raise
    report.model = runtime.config.inference.default_model or plan.model
    started = time.monotonic()
    try:
        plan.instructions = instructions(runtime, body["context"]["systeminfo"])
        result = await pipeline.run(runtime, plan)
    except LCoreError as exc:
        await pipeline.release(runtime, plan.quota_auth, ticket)
        failure = exc.__cause__ if exc.__cause__ is not None else exc
        report.send(SOURCETYPE_ERROR, type(failure).__name__, time.monotonic() - started)
        raise _as_upstream_error(exc, plan.model_id) from exc
    elapsed = time.monotonic() - started
    if result.shield_violations:
        # A shield refused: the refusal is the answer (200), nothing is charged.
        await pipeline.finish_stateless(runtime, plan, result, consume=False)
        text = result.response or result.shield_violations[0]
        report.send(SOURCETYPE_BLOCKED, text, 0.0)
        return jsonify({"data": {"text": text, "request_id": request_id}})
    await pipeline.finish_stateless(runtime, plan, result)
    text = result.response or UNABLE_TO_PROCESS
    report.send(SOURCETYPE_ANSWER, text, elapsed, result.input_tokens, result.output_tokens)
    data: dict[str, Any] = {"text": text, "request_id": request_id}
    if runtime.config.rlsapi_v1.allow_verbose_infer and body["include_metadata"]:
        data.update(tool_calls=result.tool_calls, tool_results=result.tool_results,
                    rag_chunks=result.rag_chunks,
                    referenced_documents=result.referenced_documents,
                    input_tokens=result.input_tokens, output_tokens=result.output_tokens)
    return jsonify({"data": data})


def quota_subject(kind: str | None, auth: AuthTuple) -> AuthTuple | None:
    """The identity whose quota a call spends; None when /v1/infer is not metered.

    org_id and system_id come from the X-RH-Identity header; without one (or with the field
    empty) the caller's user id is used instead, as upstream does.
    """
    if kind is None:
        return None
    if kind == "user_id":
        return auth
    org_id, system_id = identity_context()
    value = org_id if kind == "org_id" else system_id
    if value == AUTH_DISABLED:
        log.warning("rh-identity value unavailable for the quota subject; using the user id",
                    quota_subject=kind)
        return auth
    return auth._replace(user_id=value)


async def _plan(runtime: Runtime, auth: AuthTuple, body: dict[str, Any],
                subject: AuthTuple | None, ticket: QuotaTicket) -> pipeline.QueryPlan:
    model_id, provider, model = await resolve_model(runtime)
    servers = runtime.mcp_servers()
    unavailable: list[str] = []
    if runtime.mcp_health is not None:
        unavailable = await runtime.mcp_health.unreachable(servers)
    client_headers = parse_mcp_headers(request.headers.get(MCP_HEADERS), servers)
    # MCP tools only: /v1/infer does no retrieval (upstream's skip_rag is reserved).
    tools = mcp_tools(runtime, auth, client_headers, dict(request.headers),
                      frozenset(unavailable))
    # The configured shields apply as on /v2/query: redaction of everything sent on, and the
    # question_validity check before the answer's call (pipeline.run).
    shields = configured_shields(runtime)
    return pipeline.QueryPlan(
        auth=auth, query=shields.redact(body["question"].strip()), conversation_id="",
        new_conversation=False, model_id=model_id, provider=provider, model=model,
        instructions="", tools=tools, guardrails=await pipeline.select_shields(runtime, None),
        shields=shields, input=shields.redact(input_text(body)), generate_topic_summary=False,
        media_type="application/json", endpoint=ENDPOINT, store=False, quota_subject=subject,
        ticket=ticket, mcp_unavailable=unavailable)


async def resolve_model(runtime: Runtime) -> tuple[str, str, str]:
    """The configured default model (404 when Llama Stack does not serve it), else the first
    LLM Llama Stack lists (503 when there is none); (model id, provider, model)."""
    models = [m for m in await pipeline.list_models(runtime) if m["model_type"] == "llm"]
    inference = runtime.config.inference
    if inference.default_model and inference.default_provider:
        for m in models:
            if m["provider_id"] == inference.default_provider and inference.default_model in (
                    m["provider_resource_id"], m["identifier"]):
                return m["identifier"], m["provider_id"], m["provider_resource_id"]
        raise NotFound("Model not found",
                       f"Model with ID {inference.default_model} does not exist")
    if not models:
        raise BackendUnavailable("Unable to connect to inference service",
                                 "No LLM model found in available models")
    first = models[0]
    return first["identifier"], first["provider_id"], first["provider_resource_id"]


def instructions(runtime: Runtime, systeminfo: dict[str, str]) -> str:
    """The system prompt, rendered as a Jinja2 template with the client's date, os, version and
    arch (a prompt without template markers comes out unchanged)."""
    template = _template(pipeline.system_prompt(runtime, None))
    try:
        return template.render(date=datetime.now(UTC).strftime("%B %d, %Y"),
                               os=systeminfo["os"], version=systeminfo["version"],
                               arch=systeminfo["arch"])
    except jinja2.TemplateError as exc:
        log.error("system prompt template failed to render", error=type(exc).__name__)
        raise _template_error() from exc


@functools.lru_cache(maxsize=4)
def _template(prompt: str) -> jinja2.Template:
    # Sandboxed: the prompt is configuration, but a template must not reach Python internals.
    try:
        return SandboxedEnvironment().from_string(prompt)
    except jinja2.TemplateSyntaxError as exc:
        log.error("system prompt is not a valid Jinja2 template", error=str(exc))
        raise _template_error() from exc


def _as_upstream_error(exc: LCoreError, model_id: str) -> LCoreError:
    """A failed inference as upstream's /v1/infer reports it."""
    if isinstance(exc, TemplateRenderError):
        return exc
    said = f"{exc.response} {exc.cause}".lower()
    if "context_length" in said or "context length" in said:
        return PayloadTooLarge("Prompt is too long", f"The input exceeds the context window "
                                                     f"size of model '{model_id}'.")
    if exc.status == 429:
        return QuotaExceeded("The quota has been exceeded",
                             "Rate limit exceeded, please try again later")
    if isinstance(exc, BackendUnavailable) and exc.response in (
            BACKEND_DOWN, "Lost the connection to Llama Stack"):
        return BackendUnavailable(BACKEND_DOWN,
                                  "Unable to connect to the inference backend")
    return _generic_500()


class _Report:
    """The request's Splunk HEC events (nothing at all when Splunk is off)."""

    def __init__(self, runtime: Runtime, body: dict[str, Any], request_id: str) -> None:
        self.exporter: SplunkExporter | None = runtime.state.get(SPLUNK_STATE)
        self.body = body
        self.request_id = request_id
        self.deployment: str = runtime.config.deployment_environment
        self.model: str = runtime.config.inference.default_model or ""
        self.org_id, self.system_id = identity_context()
        self.user_agent = request.headers.get("User-Agent", "")[:1024]

    def send(self, sourcetype: str, response: str, seconds: float, input_tokens: int = 0,
             output_tokens: int = 0) -> None:
        if self.exporter is None:
            return
        systeminfo = self.body["context"]["systeminfo"]
        self.exporter.send(inference_event(
            question=self.body["question"].strip(), response=response, inference_time=seconds,
            model=self.model, deployment=self.deployment, org_id=self.org_id,
            system_id=self.system_id, request_id=self.request_id, cla_version=self.user_agent,
            system_os=systeminfo["os"], system_version=systeminfo["version"],
            system_arch=systeminfo["arch"], input_tokens=input_tokens,
            output_tokens=output_tokens), sourcetype)
