"""Turning shields off takes a permission, and refusals never make client strings into metric
labels (issue 23, items 3 and 17). Real Llama Stack with its Llama Guard shield, scripted LLM."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lcore_core import pipeline
from lcore_core.app import create_app
from lcore_core.auth import AuthTuple
from lcore_core.plugins import load_plugins
from lcore_core.testing import UNSAFE_MARKER
from lcore_core.testing.llama_stack import SHIELD_ID
from tests.e2e.support import Lcore, lcore_config, parse_sse, started

from .test_hardening import _HeaderRoles

SHIELDS = [{"name": "pii", "provider_id": "redaction", "config": {"rules": [
    {"pattern": r"\b\d{3}-\d{2}-\d{4}\b", "replacement": "[SSN]"}]}}]
RULES = [{"role": "*", "actions": ["query", "streaming_query", "responses", "get_metrics"]},
         {"role": "trusted", "actions": ["override_shields"]},
         {"role": "boss", "actions": ["admin"]}]
QUERY_ROUTES = ("/v2/query", "/v1/query", "/v2/streaming_query", "/v1/streaming_query")


@contextlib.asynccontextmanager
async def lcore_with(workdir: Path, llama_stack_server: Any, **sections: Any
                     ) -> AsyncIterator[Lcore]:
    config = lcore_config(workdir, "server", llama_stack_server.url, shields=SHIELDS,
                          authentication={"module": "test-roles"},
                          authorization={"access_rules": RULES}, **sections)
    app = create_app(config, plugins=load_plugins(entrypoints=False, extra=[_HeaderRoles()]))
    async with started(app) as test_app:
        yield Lcore(app, test_app.test_client(), "server", workdir)
        await app.runtime.drain()


def who(roles: str = "") -> dict[str, str]:
    return {"X-User": f"u-{roles or 'plain'}", "X-Roles": roles}


async def post(lcore: Lcore, route: str, text: str, shield_ids: Any,
               roles: str = "") -> tuple[int, Any]:
    body: dict[str, Any] = ({"input": text} if route == "/v1/responses" else {"query": text})
    if shield_ids is not None:
        body["shield_ids"] = shield_ids
    response = await lcore.client.post(route, json=body, headers=who(roles))
    if "streaming" in route and response.status_code == 200:
        return 200, parse_sse(await response.get_data(as_text=True))
    return response.status_code, await response.get_json()


async def test_leaving_out_any_shield_needs_override_shields(
        tmp_path: Path, llama_stack_server: Any, llm: Any) -> None:
    async with lcore_with(tmp_path, llama_stack_server) as lcore:
        for route in (*QUERY_ROUTES, "/v1/responses"):
            for shield_ids in ([], ["pii"], [SHIELD_ID], ["pii", "pii"]):
                status, body = await post(lcore, route, f"off {uuid.uuid4().hex}", shield_ids)
                assert status == 403, (route, shield_ids, body)
                detail = body["detail"]
                assert "override_shields" in detail["response"]
                assert "override_shields" in detail["cause"]
        assert llm.chat_requests == [] and llm.guard_requests == []

        # Naming every shield (duplicates counted once) is no override; nor is leaving it out.
        for route in (*QUERY_ROUTES, "/v1/responses"):
            for shield_ids in (["pii", SHIELD_ID, SHIELD_ID], None):
                status, body = await post(lcore, route, f"all {uuid.uuid4().hex}", shield_ids)
                assert status == 200, (route, shield_ids, body)
        # The permission, directly or through admin, lets a caller run with fewer shields.
        for roles in ("trusted", "boss"):
            for route in (*QUERY_ROUTES, "/v1/responses"):
                status, body = await post(lcore, route, "none", [], roles)
                assert status == 200, (roles, route, body)
        # Duplicates are dropped before they reach Llama Stack.
        async with lcore.app.app_context():
            _, guardrails = await pipeline.choose_shields(
                lcore.runtime, AuthTuple("u", "u", frozenset({"trusted"}), ""),
                [SHIELD_ID, SHIELD_ID, SHIELD_ID])
        assert guardrails == [SHIELD_ID]


async def test_disabled_override_uses_upstreams_texts(tmp_path: Path, llama_stack_server: Any,
                                                      llm: Any) -> None:
    async with lcore_with(tmp_path, llama_stack_server,
                          customization={"disable_shield_ids_override": True}) as lcore:
        for route in QUERY_ROUTES:
            for roles in ("", "boss"):
                status, body = await post(lcore, route, "q", ["pii", SHIELD_ID], roles)
                assert status == 422, (route, body)
                assert body["detail"] == {
                    "response": "Shield IDs customization is disabled",
                    "cause": "This instance does not support customizing shield IDs in the "
                             "query request (disable_shield_ids_override is set). Please "
                             "remove the shield_ids field from your request."}
        assert llm.chat_requests == []


def violation_labels(text: str) -> set[str]:
    return {sample.labels["shield"] for family in text_string_to_metric_families(text)
            if family.name == "ls_shield_violations"
            for sample in family.samples if sample.name == "ls_shield_violations_total"}


async def test_shield_violation_labels_are_bounded(tmp_path: Path, llama_stack_server: Any,
                                                   llm: Any) -> None:
    """Refusals under many shield_ids lists (repeats, odd names) leave only known labels."""
    async with lcore_with(tmp_path, llama_stack_server) as lcore:
        odd = [f"odd-{i}-{uuid.uuid4().hex[:4]}" for i in range(8)]
        for count in range(1, 6):
            for route in ("/v2/query", "/v2/streaming_query", "/v1/responses"):
                status, _ = await post(lcore, route, f"bad {UNSAFE_MARKER} {count}",
                                       ["pii"] + [SHIELD_ID] * count, "boss")
                assert status == 200
            status, _ = await post(lcore, "/v2/query", f"bad {UNSAFE_MARKER}",
                                   [SHIELD_ID, *odd[:count]], "boss")
            assert status == 404
        metrics = await lcore.client.get("/metrics", headers=who())
        labels = violation_labels(await metrics.get_data(as_text=True))
    assert labels == {SHIELD_ID}, labels
    assert labels <= {"pii", SHIELD_ID, "unknown"}
