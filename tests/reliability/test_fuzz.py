"""Schemathesis against `/openapi.json` of a running `lcore serve`, plus hand-written bad input.

CI runs 6 derandomized examples per operation, of valid requests and of requests that break
the document, on the simple configuration (api-key auth, SQLite user DB, memory cache). A deeper
run by hand (`-s` prints the operations and calls made; about 3 minutes each at 150 examples),
e.g. with a random seed, then on the full configuration (jwk-token auth, RBAC, quota, user DB,
conversation cache and A2A state on PostgreSQL 127.0.0.1:5432 in a schema of their own):

    LCORE_FUZZ_EXAMPLES=150 LCORE_FUZZ_SEED=random \
        .venv/bin/python -m pytest tests/reliability/test_fuzz.py -k conforms -s
    LCORE_FUZZ_EXAMPLES=150 LCORE_FUZZ_SEED=7 LCORE_FUZZ_CONFIG=full \
        .venv/bin/python -m pytest tests/reliability/test_fuzz.py -s

Every operation is run; the failures of all of them are reported together.

`LCORE_FUZZ_SEED` is an integer (reproducible) or `random` (a new seed each run, printed by
Hypothesis when an example fails); unset, the run is derandomized. `LCORE_FUZZ_MODES` is
`positive,negative` (the default) or one of them; `LCORE_FUZZ_ONLY=<text>` fuzzes only the
operations whose label ("POST /v2/query") contains the text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Config, GenerationMode
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
)
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES

from lcore_core.testing.errors import error_text
from lcore_core.testing.jwks import local_jwks

from .support import LcoreProcess, pg_schema, postgres, write_config

API_KEY = "reliability-fuzz-key-1"
MAX_BODY = 64 * 1024
EXAMPLES = int(os.environ.get("LCORE_FUZZ_EXAMPLES", "6"))
SEED = os.environ.get("LCORE_FUZZ_SEED", "")
CONFIG = os.environ.get("LCORE_FUZZ_CONFIG", "simple")
# Valid requests, and requests that break the document (each must get a 4xx)
ONLY = os.environ.get("LCORE_FUZZ_ONLY", "")  # e.g. "POST /v2/query": those operations alone
MODES = [GenerationMode(mode) for mode in
         os.environ.get("LCORE_FUZZ_MODES", "positive,negative").split(",")]
# The full configuration's caller: everything but the administrators' actions, so those
# operations answer 403 (documented) and the rest run deep.
FULL_ACTIONS = [
    "query", "streaming_query", "get_conversation", "list_conversations",
    "delete_conversation", "update_conversation", "feedback", "get_models", "get_tools",
    "get_skills", "get_shields", "list_providers", "get_provider", "list_rags", "get_rag",
    "get_metrics", "get_config", "info", "model_override", "override_shields",
    "rlsapi_v1_infer", "responses", "manage_vector_stores", "read_vector_stores",
    "manage_files", "manage_prompts", "read_prompts", "manage_saved_prompts",
    "list_mcp_servers", "a2a_agent_card", "a2a_jsonrpc"]


@dataclass
class Target:
    lcore: LcoreProcess
    headers: dict[str, str]

    @property
    def url(self) -> str:
        return self.lcore.url


def _full_sections(workdir: Path, namespace: str) -> tuple[dict[str, Any], str]:
    """jwk-token (a local JWKS file) with RBAC, quota, user DB, cache and A2A on PostgreSQL."""
    jwks, token = local_jwks(workdir, "fuzz")
    pg = postgres(namespace)
    return {
        "authentication": {"module": "jwk-token", "jwk_config": {
            "url": str(jwks), "issuer": "fuzz-issuer", "audience": "lcore",
            "jwt_configuration": {"role_rules": [
                {"jsonpath": "$.groups[*]", "operator": "contains", "value": "users",
                 "roles": ["user"]}]}}},
        "authorization": {"access_rules": [{"role": "user", "actions": FULL_ACTIONS}]},
        "database": {"postgres": pg},
        "conversation_cache": {"type": "postgres", "postgres": pg},
        "quota_handlers": {"postgres": pg, "limiters": [
            {"name": "user_daily", "type": "user_limiter", "initial_quota": 10**12,
             "quota_increase": 0, "period": "1 day"},
            {"name": "cluster_daily", "type": "cluster_limiter", "initial_quota": 10**13,
             "quota_increase": 0, "period": "1 day"}], "scheduler": {"period": 60}},
        "a2a_state": {"postgres": pg},
    }, token


@pytest.fixture(scope="module")
def fuzz_lcore(llama_stack_server: Any, tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp("fuzz")
    with pg_schema("lcore_fuzz") as namespace:
        if CONFIG == "full":
            sections, token = _full_sections(workdir, namespace)
        elif CONFIG == "simple":
            sections = {"authentication": {"module": "api-key-token",
                                           "api_key_config": {"api_key": API_KEY}}}
            token = API_KEY
        else:
            raise pytest.UsageError(f"LCORE_FUZZ_CONFIG={CONFIG!r}: simple or full")
        config = write_config(
            workdir / "lcore.yaml", llama_stack_server.url,
            service={"host": "127.0.0.1", "port": 8080, "max_request_size": MAX_BODY},
            user_data_collection={"feedback_enabled": True,
                                  "feedback_storage": str(workdir / "feedback")},
            **sections)
        lcore = LcoreProcess(config, name="fuzz").start()
        try:
            lcore.wait_ready()
            yield Target(lcore, {"Authorization": f"Bearer {token}"})
        finally:
            lcore.stop()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_lcore: Target) -> Any:
    # A body over a documented limit (size, form parts) is refused with 413: as good a
    # refusal of invalid data as a 400 or 422.
    rejected = [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
    config = Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": rejected}}})
    return schemathesis.openapi.from_url(f"{fuzz_lcore.url}/openapi.json", config=config)


def test_every_operation_conforms(fuzz_schema: Any, fuzz_lcore: Target) -> None:
    """Every documented operation, fuzzed with a valid token: no 5xx (503 only when Llama Stack
    refuses a fuzzed value), every response as documented (status, content type, schema)."""
    try:
        _fuzz_every_operation(fuzz_schema, fuzz_lcore.headers)
    finally:
        # A fuzzed PUT /v1/feedback/status may have switched feedback off (`{}` means off, as
        # upstream): the tests below need it on. (The full configuration's caller may not.)
        restored = httpx.put(f"{fuzz_lcore.url}/v1/feedback/status", json={"status": True},
                             headers=fuzz_lcore.headers, timeout=30, trust_env=False)
        assert restored.status_code in (200, 403), restored.text


def _fuzz_every_operation(fuzz_schema: Any, auth: dict[str, str]) -> None:
    checked: dict[str, int] = {}
    failures: list[str] = []  # every operation runs, so one run reports every finding
    for result in fuzz_schema.get_all_operations():
        operation = result.ok()
        if ONLY not in operation.label:
            continue
        for mode in MODES:
            try:
                _fuzz(operation.as_strategy(generation_mode=mode), auth, checked)
            except Unsatisfiable:  # nothing to break: no parameters, or plain string ones
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # reported below, with its operation
                failures.append(f"{operation.label} ({mode.value}): {_describe(exc)}"[:4000])
    print(f"fuzzed {len(checked)} operations, {sum(checked.values())} calls ({CONFIG}, "
          f"{EXAMPLES} examples, seed {SEED or 'derandomized'})")
    assert not failures, "\n\n".join(failures)
    assert len(checked) >= (20 if not ONLY else 1), checked


def _describe(exc: BaseException) -> str:
    """An exception with those it groups (Hypothesis's flaky or multiple failures)."""
    text = f"{type(exc).__name__}: {exc}"
    for inner in getattr(exc, "exceptions", ()):
        text += "\n  - " + _describe(inner).replace("\n", "\n    ")
    return text


def _fuzz(strategy: Any, auth: dict[str, str], checked: dict[str, int]) -> None:
    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not SEED, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        checked[case.operation.label] = checked.get(case.operation.label, 0) + 1
        response = case.call(headers=auth, timeout=60)
        assert response.status_code < 500 or response.status_code == 503, (
            case.method, case.formatted_path, response.status_code, response.text[:500])
        if response.status_code >= 400:
            assert error_text(response.json())
            assert "Traceback" not in response.text
        # Cross-field rules (model with provider, feedback needs one of three fields) are
        # not expressible in the document: a schema-valid body may still get a 422.
        # 5xx are judged above (a 503 from Llama Stack is documented).
        excluded = [positive_data_acceptance, not_a_server_error]
        if response.status_code < 300 and _lax_booleans_only(case):
            excluded.append(negative_data_rejection)
        if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
            # Documented as upstream does, `{"type": "string"}`: the whole body, in OpenAPI
            # 3.0. Schemathesis reads a 3.0 stream's schema as each event's (3.2's
            # `itemSchema`); the content type is still checked.
            excluded.append(response_schema_conformance)
            assert "Traceback" not in response.text
        case.validate_response(response, excluded_checks=excluded)

    if SEED.isdigit():
        check = seed(int(SEED))(check)
    check()


# pydantic's lax booleans, which upstream's FastAPI accepts for a `boolean` (`{"status": 0}`,
# `"yes"`): LCore takes them too, so an upstream client keeps working.
LAX_BOOLEANS = {"0", "1", "f", "t", "n", "y", "no", "yes", "on", "off", "true", "false"}


def _lax_booleans_only(case: Any) -> bool:
    """Whether every change of a negative case turned a documented boolean of the body into
    one of pydantic's lax booleans."""
    mutations = getattr(case.meta.phase.data, "mutations", None) if case.meta else None
    if not mutations or not isinstance(case.body, dict):
        return False
    for mutation in mutations:
        value: Any = case.body
        for key in mutation.path:
            if not isinstance(value, dict) or key not in value:
                return False
            value = value[key]
        # The property's schema, not the one branch of its `anyOf` (`null`) the change broke
        schema = _body_schema(case, re.sub(r"(/(anyOf|oneOf)/\d+)+$", "",
                                           mutation.schema_pointer or ""))
        lax = (str(value).lower() in LAX_BOOLEANS if isinstance(value, str)
               else not isinstance(value, bool) and isinstance(value, int | float)
               and value in (0, 1))
        if not lax or "boolean" not in json.dumps(schema):
            return False
    return True


def _body_schema(case: Any, pointer: str) -> Any:
    """The part of the operation's JSON body schema at `pointer` ($refs followed)."""
    document = case.operation.schema.raw_schema

    def follow(schema: Any) -> Any:
        while isinstance(schema, dict) and "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    body = case.operation.definition.raw.get("requestBody", {})
    schema = follow(body.get("content", {}).get("application/json", {}).get("schema"))
    for part in pointer.strip("/").split("/") if pointer else ():
        schema = follow(schema.get(part) if isinstance(schema, dict) else None)
    return schema


# --- hand-written abuse -----------------------------------------------------------------------


def post(lcore: Target, path: str, **kwargs: Any) -> httpx.Response:
    headers = {**lcore.headers, **kwargs.pop("headers", {})}
    return httpx.post(f"{lcore.url}{path}", headers=headers, timeout=30, trust_env=False,
                      **kwargs)


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert "Traceback" not in response.text
    return error_text(response.json())


@pytest.mark.parametrize("path", ["/v2/query", "/v1/feedback"])
def test_malformed_bodies_are_clear_4xx(fuzz_lcore: Target, path: str) -> None:
    # FastAPI's answer, as upstream gives it: 422 json_invalid at the offset of the problem
    broken = post(fuzz_lcore, path, content=b'{"query": "x",',
                  headers={"Content-Type": "application/json"})
    assert "JSON decode error" in error(broken, 422)
    assert broken.json()["detail"][0]["type"] == "json_invalid"
    assert broken.json()["detail"][0]["loc"] == ["body", 14]
    assert "Content-Type" in error(post(fuzz_lcore, path, content=b"query=x", headers={
        "Content-Type": "application/x-www-form-urlencoded"}), 400)
    assert "Content-Type" in error(post(fuzz_lcore, path, content=b"{}",
                                        headers={"Content-Type": "text/plain"}), 400)
    assert "dictionary or object" in error(post(fuzz_lcore, path, json=["not", "an", "object"]),
                                           422)
    assert "JSON decode error" in error(post(fuzz_lcore, path, content=b"\xff\xfe{}",
                                             headers={"Content-Type": "application/json"}), 422)
    huge = b'{"query": "' + b"a" * (MAX_BODY * 2) + b'"}'
    assert str(MAX_BODY) in error(post(fuzz_lcore, path, content=huge,
                                       headers={"Content-Type": "application/json"}), 413)


@pytest.mark.parametrize("text", ["\u0000", "\ud800", "\U0001f600" * 100, "\u202e\u200b",
                                  "a\u0301" * 50])
def test_unicode_edge_cases(fuzz_lcore: Target, text: str) -> None:
    raw = json.dumps({"query": text, "conversation_id": text})  # escaped: even lone surrogates
    response = post(fuzz_lcore, "/v2/query", content=raw.encode(),
                    headers={"Content-Type": "application/json"})
    assert "conversation_id" in error(response, 422)


@pytest.mark.parametrize("conversation_id", [
    "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc", "..\\..\\boot.ini",
    "/etc/passwd", "a/../../b", "x" * 300])
def test_path_traversal_in_ids(fuzz_lcore: Target, conversation_id: str) -> None:
    for method in ("GET", "DELETE"):
        response = httpx.request(method, f"{fuzz_lcore.url}/v2/conversations/"
                                         f"{conversation_id}", headers=fuzz_lcore.headers,
                                 timeout=30, trust_env=False)
        assert 400 <= response.status_code < 500, (method, response.status_code)
        assert "Traceback" not in response.text
    feedback_dir = Path(fuzz_lcore.lcore.config.parent / "feedback")
    before = {p.resolve() for p in fuzz_lcore.lcore.config.parent.rglob("*")}
    body = {"conversation_id": conversation_id, "user_question": "q", "llm_response": "a",
            "sentiment": 1, "user_feedback": conversation_id}
    assert "conversation_id" in error(post(fuzz_lcore, "/v1/feedback", json=body), 422)
    # A valid id of the caller's own conversation: the record lands in the feedback
    # directory and nowhere else.
    asked = post(fuzz_lcore, "/v2/query", json={"query": "a question to give feedback on",
                                               "no_tools": True,
                                               "generate_topic_summary": False})
    assert asked.status_code == 200, asked.text
    own = asked.json()["conversation_id"]
    before = {p.resolve() for p in fuzz_lcore.lcore.config.parent.rglob("*")}
    stored = post(fuzz_lcore, "/v1/feedback", json={**body, "conversation_id": own})
    assert stored.status_code == 200, stored.text
    created = {p.resolve() for p in fuzz_lcore.lcore.config.parent.rglob("*")} - before
    created = {p for p in created if not p.name.endswith(".log")}
    assert created and all(p.parent == feedback_dir.resolve() for p in created
                           if p != feedback_dir.resolve()), created
    record = json.loads(next(p for p in created if p.suffix == ".json").read_text())
    assert record["user_feedback"] == conversation_id  # stored as data, never as a path
