"""`question_validity` shields: a model says whether the question is on topic.

One Responses call per shield, with `store: false` (it is no turn of any conversation), before
the answer's call. The verdict is the reply stripped of surrounding whitespace: exactly
`ALLOWED` lets the question through, anything else (`REJECTED`, a sentence, nothing) refuses it,
as upstream decides.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from string import Template
from typing import TYPE_CHECKING, Any

from lcore_core import tokens, tracing
from lcore_core.llama import llama_errors
from lcore_core.shields.schema import ALLOWED, REJECTED

if TYPE_CHECKING:
    from lcore_core.runtime import Runtime


@dataclass(frozen=True)
class QuestionValidity:
    """One configured `question_validity` shield."""

    name: str
    model_id: str
    prompt: Template
    invalid_response: str

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any]) -> QuestionValidity:
        return cls(name, config["model_id"], Template(config["model_prompt"]),
                   config["invalid_question_response"])

    def prompt_for(self, question: str) -> str:
        # Placeholders were checked at start-up; the question's own `$` signs are not expanded.
        return self.prompt.substitute(message=question, allowed=ALLOWED, rejected=REJECTED)


@dataclass
class Verdict:
    """What the validity checks of one question said and cost."""

    refused_by: str | None = None
    response: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0


async def check(runtime: Runtime, shields: Sequence[QuestionValidity], question: str) -> Verdict:
    """Run the shields in order; the first refusal ends the checks. Llama Stack errors raise
    `LCoreError` (the question then gets no answer at all)."""
    verdict = Verdict()
    for shield in shields:
        prompt = shield.prompt_for(question)
        started = time.perf_counter()
        with llama_errors("responses.create", {"gen_ai.request.model": shield.model_id,
                                               "lcore.purpose": "question_validity",
                                               "lcore.shield": shield.name}):
            reply = await runtime.llama.respond(
                {"model": shield.model_id, "input": prompt, "store": False},
                tracing.outgoing_headers())
        verdict.seconds += time.perf_counter() - started
        text, sent, received = await _read(reply, prompt)
        verdict.input_tokens += sent
        verdict.output_tokens += received
        if text.strip() != ALLOWED:
            verdict.refused_by, verdict.response = shield.name, shield.invalid_response
            return verdict
    return verdict


async def _read(reply: dict[str, Any], prompt: str) -> tuple[str, int, int]:
    """The reply's text and its token usage (estimated when the provider reported none)."""
    texts = []
    for item in reply.get("output") or []:
        if item.get("type") != "message":
            continue
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        texts.extend(part.get("text") or "" for part in content or []
                     if isinstance(part, dict))
    text = "".join(texts)
    usage = reply.get("usage") or {}
    sent, received = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    if not (sent or received):
        await tokens.ready_if(True)
        sent, received = tokens.count(prompt), tokens.count(text)
    return text, sent, received


async def record_refusal(runtime: Runtime, conversation_id: str, question: str,
                         answer: str) -> None:
    """Put a refused turn into its Llama Stack conversation, so the conversation reads as the
    user saw it (a chain of stored responses has no place for it: the next turn continues from
    the last answered one)."""
    with llama_errors("conversations.items.create"):
        await runtime.llama.client.conversations.items.create(
            conversation_id,
            items=[{"type": "message", "role": "user", "content": question},
                   {"type": "message", "role": "assistant", "content": answer}])
