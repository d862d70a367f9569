"""Configured shields (`shields:`) end to end: LCore -> real Llama Stack -> scripted LLM.

Redaction is checked where it matters: in what the LLM received (the scripted LLM's request log),
in what Llama Stack stored (a follow-up turn replays it to the LLM) and in what LCore stored
(`/v1/conversations/{id}`). Question validity is checked by whether the answer's call was made.
Both conversation kinds run: a refused turn is written into a Llama Stack conversation, and
has no place in a chain of stored responses.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llama_stack import LLM_MODEL_ID, SHIELD_ID
from lcore_core.testing.llm import ON_TOPIC_MARKER, TOPIC_CHECK_MARKER, count_words, message_text

from .support import Lcore, lcore_config, started

OFF_TOPIC_ANSWER = "I only answer questions about LCore."
SSN = "123-45-6789"
CHECK_PROMPT = (f"{TOPIC_CHECK_MARKER} Is this about LCore? Reply ${{allowed}} or "
                f"${{rejected}}.\nQuestion: ${{message}}")
SHIELDS = [
    {"name": "pii", "provider_id": "redaction", "config": {"rules": [
        {"pattern": r"\b\d{3}-\d{2}-\d{4}\b", "replacement": "[SSN]"},
        {"pattern": r"sk-[a-z0-9]+", "replacement": "[KEY]"}]}},
    {"name": "topic", "provider_id": "question_validity", "config": {
        "model_id": LLM_MODEL_ID, "model_prompt": CHECK_PROMPT,
        "invalid_question_response": OFF_TOPIC_ANSWER}},
]


@contextlib.asynccontextmanager
async def app_with(workdir: Path, llama_stack_server: Any,
                   **sections: Any) -> AsyncIterator[Lcore]:
    """A started app (server mode) with these configuration sections."""
    config = lcore_config(workdir, "server", llama_stack_server.url, **sections)
    app = create_app(config, plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        yield Lcore(app, test_app.test_client(), "server", workdir)
        await app.runtime.drain()


@pytest.fixture(scope="module", params=["response_chain", "llama_stack_conversation"])
async def shielded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   llama_stack_server: Any) -> AsyncIterator[Lcore]:
    workdir: Path = tmp_path_factory.mktemp("shields")
    async with app_with(workdir, llama_stack_server, shields=SHIELDS,
                        service={"host": "127.0.0.1", "port": 8080,
                                 "conversation_state": request.param}) as lcore:
        yield lcore


@pytest.fixture(autouse=True)
async def settled(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A test's topic summaries finish before the next test looks at the LLM's requests."""
    yield
    lcore = request.node.funcargs.get("shielded")
    if isinstance(lcore, Lcore):
        await lcore.runtime.drain()


def on_topic(text: str) -> str:
    return f"{text} {ON_TOPIC_MARKER} {uuid.uuid4().hex[:6]}"


def answered(llm: Any, needle: str) -> list[Any]:
    """The answer calls (not checks) whose last user message contains `needle`."""
    found = []
    for r in llm.chat_requests:
        users = [m for m in r.messages if m.get("role") == "user"]
        if users and needle in message_text(users[-1]):
            found.append(r)
    return found


def checks(llm: Any, needle: str) -> list[Any]:
    return [r for r in llm.topic_check_requests if needle in r.text]


async def history(lcore: Lcore, conversation_id: str) -> list[dict[str, Any]]:
    response = await lcore.client.get(f"/v1/conversations/{conversation_id}")
    assert response.status_code == 200, await response.get_data(as_text=True)
    return (await response.get_json())["chat_history"]


def shield_refusals(metrics: str, shield: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f'ls_shield_violations_total{{shield="{shield}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- question validity ---------------------------------------------------------------------


async def test_off_topic_question_gets_the_fixed_answer_without_the_answer_call(
        shielded: Lcore, llm: Any) -> None:
    before = await (await shielded.client.get("/metrics")).get_data(as_text=True)
    question = f"what is the weather {uuid.uuid4().hex[:6]}"
    response = await shielded.query(question)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    assert body["response"] == OFF_TOPIC_ANSWER
    assert answered(llm, question) == []  # the answer's call was never made
    (check,) = checks(llm, question)
    # The check's tokens are the turn's: the scripted LLM counts words of its prompt.
    assert body["input_tokens"] == sum(count_words(message_text(m)) for m in check.messages)
    assert body["output_tokens"] == 1  # "REJECTED"
    assert body["tool_calls"] == [] and body["referenced_documents"] == []
    # Stored as a turn, as upstream does.
    turns = await history(shielded, body["conversation_id"])
    assert [(t["messages"][0]["content"], t["messages"][1]["content"]) for t in turns] == [
        (question, OFF_TOPIC_ANSWER)]
    after = await (await shielded.client.get("/metrics")).get_data(as_text=True)
    assert shield_refusals(after, "topic") == shield_refusals(before, "topic") + 1


async def test_the_check_is_not_stored_in_llama_stack(shielded: Lcore, llm: Any) -> None:
    question = on_topic("is the check stored")
    body = await (await shielded.query(question)).get_json()
    assert body["response"].startswith(f"Scripted answer to: {question}")
    listed = await shielded.runtime.llama.client.responses.list(limit=50)
    stored_inputs = [str(r.input) for r in listed.data]
    assert any(question in text for text in stored_inputs)  # the answer is stored ...
    assert not any(TOPIC_CHECK_MARKER in text for text in stored_inputs)  # ... the check not


async def test_on_topic_question_is_answered_and_the_check_counted(
        shielded: Lcore, llm: Any) -> None:
    question = on_topic("how do shields work")
    body = await (await shielded.query(question)).get_json()
    assert body["response"] == f"Scripted answer to: {question} (user turns: 1)"
    (answer,) = answered(llm, question)
    (check,) = checks(llm, question)
    words = lambda r: sum(count_words(message_text(m)) for m in r.messages)  # noqa: E731
    assert body["input_tokens"] == words(answer) + words(check)
    assert body["output_tokens"] == count_words(body["response"]) + 1  # + "ALLOWED"


async def test_a_refused_turn_does_not_break_the_conversation(shielded: Lcore,
                                                              llm: Any) -> None:
    first = on_topic("first question")
    conversation_id = (await (await shielded.query(first)).get_json())["conversation_id"]
    refused = await (await shielded.query("off topic now",
                                          conversation_id=conversation_id)).get_json()
    assert refused["response"] == OFF_TOPIC_ANSWER
    third = on_topic("third question")
    body = await (await shielded.query(third, conversation_id=conversation_id)).get_json()
    assert body["response"].startswith(f"Scripted answer to: {third}")
    turns = await history(shielded, conversation_id)
    assert [t["messages"][1]["content"] for t in turns][1] == OFF_TOPIC_ANSWER
    (answer,) = answered(llm, third)
    replayed = [message_text(m) for m in answer.messages if m.get("role") != "system"]
    assert replayed[0] == first
    # The answer's call continues from the last answered turn.
    assert "off topic now" not in replayed
    if shielded.app.runtime.config.service.conversation_state == "llama_stack_conversation":
        # A Llama Stack conversation holds the refused turn too, as the user saw it (its
        # history is read from there when no conversation cache is configured).
        page = await shielded.runtime.llama.client.conversations.items.list(
            conversation_id, order="asc")
        said = [(i.role, i.content) for i in page.data if i.type == "message"]
        assert ("user", "off topic now") in said and ("assistant", OFF_TOPIC_ANSWER) in said


async def test_streaming_off_topic_and_on_topic(shielded: Lcore, llm: Any) -> None:
    question = f"tell me a joke {uuid.uuid4().hex[:6]}"
    status, events = await shielded.stream(question)
    assert status == 200
    assert [e["event"] for e in events] == ["start", "token", "turn_complete", "end"]
    assert events[1]["data"] == {"id": 0, "token": OFF_TOPIC_ANSWER}
    assert events[2]["data"]["token"] == OFF_TOPIC_ANSWER
    assert events[3]["data"]["output_tokens"] == 1
    assert answered(llm, question) == []
    turns = await history(shielded, events[0]["data"]["conversation_id"])
    assert turns[0]["messages"][1]["content"] == OFF_TOPIC_ANSWER

    question = on_topic("stream an answer")
    status, events = await shielded.stream(question)
    tokens = "".join(e["data"]["token"] for e in events if e["event"] == "token")
    assert tokens == f"Scripted answer to: {question} (user turns: 1)"
    assert len(checks(llm, question)) == 1 and len(answered(llm, question)) == 1
    (answer,) = answered(llm, question)
    (check,) = checks(llm, question)
    words = lambda r: sum(count_words(message_text(m)) for m in r.messages)  # noqa: E731
    assert events[-1]["data"]["input_tokens"] == words(answer) + words(check)


async def test_failing_check_fails_the_query_and_stores_nothing(
        tmp_path: Path, llama_stack_server: Any, llm: Any) -> None:
    broken = [{**SHIELDS[1], "config": {**SHIELDS[1]["config"],
                                        "model_id": "nowhere/no-such-model"}}]
    async with app_with(tmp_path, llama_stack_server, shields=broken) as lcore:
        response = await lcore.query(on_topic("check breaks"))
        assert response.status_code >= 400
        assert set((await response.get_json())["detail"]) >= {"response", "cause"}
        status, _ = await lcore.stream(on_topic("check breaks"))
        assert status >= 400
        assert answered(llm, "check breaks") == []
        listing = await (await lcore.client.get("/v2/conversations")).get_json()
        assert listing["conversations"] == []


# --- redaction -----------------------------------------------------------------------------


async def test_redaction_covers_what_the_llm_receives_and_what_is_stored(
        shielded: Lcore, llm: Any) -> None:
    tag = uuid.uuid4().hex[:6]
    question = on_topic(f"my ssn is {SSN} and my key sk-abc123 {tag}")
    body = await (await shielded.query(
        question, attachments=[{"attachment_type": "log", "content_type": "text/plain",
                                "content": f"user ssn {SSN}"}])).get_json()
    redacted = question.replace(SSN, "[SSN]").replace("sk-abc123", "[KEY]")
    (answer,) = answered(llm, tag)
    (check,) = checks(llm, tag)
    for sent in (answer.text, check.text):
        assert SSN not in sent and "sk-abc123" not in sent
        assert "[SSN]" in sent and "[KEY]" in sent
    assert "user ssn [SSN]" in answer.text  # the attachment too
    turn = (await history(shielded, body["conversation_id"]))[0]
    assert turn["messages"][0]["content"] == redacted
    assert SSN not in str(turn)
    # What Llama Stack stored: a follow-up turn replays the first one to the LLM.
    follow = on_topic("and again")
    await shielded.query(follow, conversation_id=body["conversation_id"])
    (replay,) = answered(llm, follow)
    assert redacted in replay.text and SSN not in replay.text
    # The topic summary of the new conversation went out redacted as well.
    await shielded.runtime.drain()
    assert all(SSN not in r.text for r in llm.requests if r.body)


async def test_redaction_covers_the_answer(shielded: Lcore, llm: Any) -> None:
    llm.script("echo my number", text=f"Your number is {SSN}.")
    body = await (await shielded.query(on_topic("echo my number"))).get_json()
    assert body["response"] == "Your number is [SSN]."
    turn = (await history(shielded, body["conversation_id"]))[0]
    assert turn["messages"][1]["content"] == "Your number is [SSN]."


async def test_redaction_covers_the_streamed_answer(shielded: Lcore, llm: Any) -> None:
    llm.script("echo my number", text=f"Your number is {SSN}.")
    _, events = await shielded.stream(on_topic("echo my number"))
    complete = next(e for e in events if e["event"] == "turn_complete")
    assert complete["data"]["token"] == "Your number is [SSN]."
    turn = (await history(shielded, events[0]["data"]["conversation_id"]))[0]
    assert turn["messages"][1]["content"] == "Your number is [SSN]."


# --- shield_ids ----------------------------------------------------------------------------


async def test_shield_ids_pick_among_configured_and_llama_stack_shields(
        shielded: Lcore, llm: Any) -> None:
    tag = uuid.uuid4().hex[:6]
    # Only redaction: an off-topic question is answered, redacted.
    body = await (await shielded.query(f"off topic {SSN} {tag}",
                                       shield_ids=["pii"])).get_json()
    assert body["response"].startswith("Scripted answer to: off topic [SSN]")
    assert checks(llm, tag) == [] and llm.guard_requests == []
    # None at all: the raw text reaches the LLM.
    tag = uuid.uuid4().hex[:6]
    body = await (await shielded.query(f"off topic {SSN} {tag}", shield_ids=[])).get_json()
    assert body["response"].startswith(f"Scripted answer to: off topic {SSN}")
    # Only Llama Stack's shield: Llama Guard runs, LCore's shields do not.
    tag = uuid.uuid4().hex[:6]
    body = await (await shielded.query(f"off topic {SSN} {tag}",
                                       shield_ids=[SHIELD_ID])).get_json()
    assert body["response"].startswith(f"Scripted answer to: off topic {SSN}")
    assert llm.guard_requests


async def test_unknown_shield_id_is_404(shielded: Lcore, llm: Any) -> None:
    response = await shielded.query("hello", shield_ids=["pii", "nope", "nada"])
    assert response.status_code == 404
    assert (await response.get_json())["detail"] == {
        "response": "Shields not found", "cause": "Shields with ID nada, nope does not exist"}
    assert llm.chat_requests == [] and llm.topic_check_requests == []


async def test_shields_endpoint_lists_configured_shields_first(shielded: Lcore) -> None:
    shields = (await (await shielded.client.get("/v1/shields")).get_json())["shields"]
    assert [s.get("name") for s in shields[:2]] == ["pii", "topic"]
    assert shields[0] == {
        "name": "pii", "identifier": "pii", "provider_id": "redaction", "type": "shield",
        "config": {"case_sensitive": False, "rules": [
            {"pattern": r"\b\d{3}-\d{2}-\d{4}\b", "replacement": "[SSN]",
             "case_sensitive": None},
            {"pattern": r"sk-[a-z0-9]+", "replacement": "[KEY]", "case_sensitive": None}]}}
    assert shields[1]["config"] == {"model_id": LLM_MODEL_ID, "model_prompt": CHECK_PROMPT,
                                    "invalid_question_response": OFF_TOPIC_ANSWER}
    assert any(s.get("identifier") == SHIELD_ID for s in shields[2:])


async def test_disabled_override_refuses_shield_ids(tmp_path: Path, llama_stack_server: Any,
                                                    llm: Any) -> None:
    async with app_with(tmp_path, llama_stack_server, shields=SHIELDS,
                        customization={"disable_shield_ids_override": True}) as lcore:
        for shield_ids in ([], ["pii"]):
            response = await lcore.query(f"off topic {SSN}", shield_ids=shield_ids)
            assert response.status_code == 422
            detail = (await response.get_json())["detail"]
            assert detail["response"] == "Shield IDs customization is disabled"
            assert "disable_shield_ids_override" in detail["cause"]
        assert llm.chat_requests == []
        # Without shield_ids every shield runs.
        body = await (await lcore.query(f"off topic {SSN}")).get_json()
        assert body["response"] == OFF_TOPIC_ANSWER
