"""Providers that report no usage (llama.cpp streams): LCore estimates tokens and says so."""

from __future__ import annotations

import sys

import pytest
import tiktoken

from lcore_core import tokens
from lcore_core.auth import AuthTuple
from lcore_core.pipeline import QueryPlan, QueryResult, estimate_usage, summarise
from lcore_core.tokens import CHARS_PER_TOKEN
from lcore_core.tokens import count as estimate_tokens


def _plan(query: str = "What is Kubernetes?", instructions: str = "Be brief.") -> QueryPlan:
    return QueryPlan(auth=AuthTuple("u", "u", frozenset()), query=query, conversation_id="c",
                     new_conversation=True, model_id="local/m", provider="local", model="m",
                     instructions=instructions, tools=[], guardrails=[], input=query,
                     generate_topic_summary=False, media_type="application/json",
                     endpoint="query")


@pytest.fixture
def no_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """As without the `library` extra: tiktoken cannot be imported."""
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    monkeypatch.setattr(tokens, "_loaded", False)
    monkeypatch.setattr(tokens, "_encoding", None)


def test_counts_with_the_cl100k_tokenizer_when_installed():
    # The test extra installs tiktoken with its offline data (through the library extra).
    assert tokens.load() is not None  # also points TIKTOKEN_CACHE_DIR at the packaged copy
    reference = tiktoken.get_encoding("cl100k_base")
    text = "Kubernetes pods group containers; <|endoftext|> is just text here."
    assert estimate_tokens(text) == len(reference.encode(text, disallowed_special=()))
    assert estimate_tokens("hello world") == 2  # the character rule would say 3
    assert estimate_tokens("") == 0


def test_without_a_tokenizer_four_characters_make_a_token(no_tokenizer):
    assert tokens.load() is None
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    assert estimate_tokens("x" * CHARS_PER_TOKEN) == 1
    assert estimate_tokens("x" * (CHARS_PER_TOKEN + 1)) == 2


def test_missing_usage_is_estimated_and_marked():
    response = {"usage": None, "output": [
        {"type": "message", "content": [{"type": "output_text", "text": "A" * 40}]}]}
    result = summarise(response)
    assert (result.input_tokens, result.output_tokens, result.tokens_estimated) == (0, 0, False)
    plan = _plan()
    estimate_usage(plan, result)
    assert result.tokens_estimated is True
    assert result.output_tokens == estimate_tokens("A" * 40)
    assert result.input_tokens == (estimate_tokens(plan.instructions)
                                   + estimate_tokens(plan.query))


def test_tool_output_counts_as_input_and_arguments_as_output():
    result = QueryResult(response="ok",
                         tool_calls=[{"id": "1", "name": "file_search",
                                      "args": {"queries": ["kubernetes pods"]}}],
                         tool_results=[{"id": "1", "content": "P" * 400}])
    plan = _plan(instructions="")
    estimate_usage(plan, result)
    assert result.input_tokens == estimate_tokens(plan.query) + estimate_tokens("P" * 400)
    assert result.output_tokens == 1 + estimate_tokens('{"queries": ["kubernetes pods"]}')


def test_reported_usage_is_kept():
    result = QueryResult(response="x" * 400, input_tokens=7, output_tokens=0)
    estimate_usage(_plan(), result)
    assert (result.input_tokens, result.output_tokens, result.tokens_estimated) == (7, 0, False)


async def test_the_tokenizer_loads_only_when_an_answer_needs_counting(monkeypatch):
    monkeypatch.setattr(tokens, "_loaded", False)
    monkeypatch.setattr(tokens, "_encoding", None)
    await tokens.ready_if(False)  # the provider reported usage: nothing is loaded
    assert tokens._loaded is False
    await tokens.ready_if(True)
    assert tokens._loaded is True and tokens._encoding is not None
