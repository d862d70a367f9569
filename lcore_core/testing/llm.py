"""A deterministic, scriptable OpenAI-compatible LLM server: the only fake LCore's tests use.

It serves ``GET /v1/models``, ``POST /v1/chat/completions`` (streaming and not),
``POST /v1/completions`` and ``POST /v1/embeddings`` on 127.0.0.1 from a background thread, so a
real Llama Stack (``remote::openai``) can drive it. It also answers Llama Stack's
``GET /v1/version`` (with :data:`SCRIPTED_VERSION`), so tests may point LCore straight at it.

Replies, in order of precedence:

1. **Llama Guard.** A request whose text contains ``UNSAFE CONTENT CATEGORIES`` is a safety check:
   the answer is ``safe``, or ``unsafe\\nS1`` when the text contains :data:`UNSAFE_MARKER`.
2. **Topic check.** A request whose text contains :data:`TOPIC_CHECK_MARKER` (put it in a
   ``question_validity`` shield's ``model_prompt``) is a question-validity check: the answer is
   ``REJECTED``, or ``ALLOWED`` when the text contains :data:`ON_TOPIC_MARKER`.
3. **Topic titles.** A request whose text contains :data:`TITLES_MARKER` (LCore's topic-summary
   instruction) lists questions as ``<n>. <question>`` lines in its last user message; the answer
   has one line ``<n>. Title: <the question's first 6 words>`` per question, in order, leaving
   out the questions that contain :data:`NO_TITLE_MARKER`. Only rules whose ``match`` is a
   predicate apply to such a request (a substring rule is about questions, not title lists).
4. **Scripted rules**, first match wins (see :meth:`ScriptedLLM.script`). A rule with tool calls
   answers with them while no ``tool`` message follows the last user message, and with its
   ``then`` text once one does.
5. **The default reply**, exactly::

       Scripted answer to: <last user message> (user turns: <N>)

   where ``<N>`` counts the ``user`` messages. When an ``assistant`` message precedes the last user
   message (a continued conversation) the parenthesis also quotes the first user message, cut to
   60 characters: ``(user turns: 2; first: <first user message>)``. When ``tool`` messages follow
   the last user message the reply is ``Tool output: <their contents joined by a space>``.

Usage is deterministic: ``prompt_tokens`` is the number of whitespace-separated words across all
message contents (strings or lists of text parts), ``completion_tokens`` the number of words in the
reply (for tool calls: in the JSON arguments), ``total_tokens`` their sum. Non-streaming answers
always carry usage; streams carry it in a last chunk when ``stream_options.include_usage`` is set.
A rule scripted with ``usage=False``, or a server built with ``report_usage=False``, sends no usage
at all, as llama.cpp's server does in streams.

Embeddings are a hashed bag of words, L2-normalised, so texts that share words are close.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from quart import Quart, Response, request

from lcore_core.testing._server import ThreadedASGIServer

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_LLM_MODEL",
    "GUARD_PROMPT_MARKER",
    "NO_TITLE_MARKER",
    "ON_TOPIC_MARKER",
    "SCRIPTED_VERSION",
    "TITLES_MARKER",
    "TOPIC_CHECK_MARKER",
    "UNSAFE_MARKER",
    "RecordedRequest",
    "Rule",
    "ScriptedLLM",
    "ToolCall",
    "count_words",
    "message_text",
]

DEFAULT_LLM_MODEL = "scripted-llm"
DEFAULT_EMBEDDING_MODEL = "scripted-embed"
#: What ``GET /v1/version`` answers (Llama Stack's version probe; see the module docstring).
SCRIPTED_VERSION = "0.0.0-scripted"
#: Put this string in a conversation to make the Llama Guard check answer ``unsafe``.
UNSAFE_MARKER = "LCORE-UNSAFE"
#: Llama Guard's prompt template always contains this heading.
GUARD_PROMPT_MARKER = "UNSAFE CONTENT CATEGORIES"
#: A prompt containing this is a question-validity check (answered ALLOWED or REJECTED).
TOPIC_CHECK_MARKER = "LCORE-TOPIC-CHECK"
#: A question containing this is on topic for the question-validity check.
ON_TOPIC_MARKER = "LCORE-ON-TOPIC"

#: LCore's topic-summary instruction begins with this (lcore_core.summaries.INSTRUCTION).
TITLES_MARKER = "Write numbered topic titles"
#: A question containing this gets no line in a topic-titles reply.
NO_TITLE_MARKER = "LCORE-NO-TITLE"

Messages = list[dict[str, Any]]
Predicate = Callable[[Messages], bool]
TextSource = str | Callable[[Messages], str]

_WORD = re.compile(r"[a-z0-9]+")


def message_text(message: dict[str, Any]) -> str:
    """Text of one chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return " ".join(parts)


def count_words(text: str) -> int:
    """Whitespace-separated words: the scripted LLM's token count."""
    return len(text.split())


def _prompt_tokens(messages: Messages) -> int:
    return sum(count_words(message_text(m)) for m in messages)


def _last_user_index(messages: Messages) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return -1


def _tool_outputs(messages: Messages) -> list[str]:
    """Contents of the ``tool`` messages that follow the last user message."""
    start = _last_user_index(messages) + 1
    return [message_text(m) for m in messages[start:] if m.get("role") == "tool"]


def _last_user_text(messages: Messages) -> str:
    index = _last_user_index(messages)
    return message_text(messages[index]) if index >= 0 else ""


def titles_reply(messages: Messages) -> str:
    """The reply to a topic-titles request (see the module docstring)."""
    lines = []
    for line in _last_user_text(messages).splitlines():
        found = re.match(r"(\d+)\. (.*)", line)
        if found and NO_TITLE_MARKER not in found.group(2):
            lines.append(f"{found.group(1)}. Title: {' '.join(found.group(2).split()[:6])}")
    return "\n".join(lines)


def default_reply(messages: Messages) -> str:
    """The reply when no rule matches; the format is documented in the module docstring."""
    outputs = _tool_outputs(messages)
    if outputs:
        return "Tool output: " + " ".join(outputs)
    last = _last_user_index(messages)
    users = [m for m in messages if m.get("role") == "user"]
    text = f"Scripted answer to: {_last_user_text(messages)} (user turns: {len(users)}"
    if any(m.get("role") == "assistant" for m in messages[:last]):
        text += f"; first: {message_text(users[0])[:60]}"
    return text + ")"


@dataclass(frozen=True)
class ToolCall:
    """A tool call the scripted LLM emits: the tool's name and its JSON arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rule:
    """One scripted behaviour; build it with :meth:`ScriptedLLM.script`."""

    match: str | Predicate | None = None
    text: TextSource | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    then: TextSource | None = None
    status: int | None = None
    error: str = "scripted failure"
    delay: float = 0.0
    chunk_delay: float = 0.0
    chunks: int | None = None
    times: int | None = None
    usage: bool = True
    tool_rounds: int = 1
    used: int = 0

    def matches(self, messages: Messages) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.match is None:
            return True
        if isinstance(self.match, str):
            return self.match in _last_user_text(messages)
        return bool(self.match(messages))


@dataclass(frozen=True)
class RecordedRequest:
    """A request the scripted LLM received, kept for assertions."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> Messages:
        return list(self.body.get("messages") or [])

    @property
    def tool_names(self) -> list[str]:
        """Names of the function tools offered to the model."""
        return [t.get("function", {}).get("name", "") for t in self.body.get("tools") or []]

    @property
    def text(self) -> str:
        """All message contents joined by newlines (or the prompt, for completions)."""
        if "messages" in self.body:
            return "\n".join(message_text(m) for m in self.messages)
        prompt = self.body.get("prompt", "")
        return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))

    @property
    def is_guard_check(self) -> bool:
        return GUARD_PROMPT_MARKER in self.text

    @property
    def is_topic_check(self) -> bool:
        return TOPIC_CHECK_MARKER in self.text

    @property
    def is_titles_request(self) -> bool:
        return TITLES_MARKER in self.text


@dataclass
class _Answer:
    """What to send back for one completion request."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    status: int | None = None
    error: str = ""
    delay: float = 0.0
    chunk_delay: float = 0.0
    chunks: int | None = None
    usage: bool = True


def _render(source: TextSource, messages: Messages) -> str:
    if callable(source):
        return source(messages)
    outputs = _tool_outputs(messages)
    # str.replace, not str.format: user text may contain braces
    return source.replace("{tool_output}", " ".join(outputs))


def _split(text: str, chunks: int | None) -> list[str]:
    """Split text into stream deltas: one per word by default, or ``chunks`` near-equal pieces."""
    if not text:
        return []
    if chunks is None:
        return re.findall(r"\S+\s*|\s+", text)
    chunks = max(1, min(chunks, len(text)))
    size = math.ceil(len(text) / chunks)
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    return pieces


def embed(text: str, dimension: int) -> list[float]:
    """Hashed bag of lower-cased words, L2-normalised; deterministic across processes."""
    vector = [0.0] * dimension
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dimension
        # a signed bucket keeps unrelated words from piling up as a common positive offset
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0:
        # an empty text still needs a valid unit vector for cosine search
        vector[0] = 1.0
        return vector
    return [v / norm for v in vector]


class ScriptedLLM:
    """The scripted OpenAI-compatible server; use as a context manager or ``start()``/``stop()``."""

    def __init__(
        self,
        *,
        model: str = DEFAULT_LLM_MODEL,
        embedding_model: str = DEFAULT_EMBEDDING_MODEL,
        embedding_dimension: int = 384,
        host: str = "127.0.0.1",
        port: int = 0,
        report_usage: bool = True,
    ) -> None:
        self.model = model
        self.report_usage = report_usage
        self.embedding_model = embedding_model
        self.embedding_dimension = embedding_dimension
        self._lock = threading.RLock()  # reentrant: rule callables may read .requests
        self._rules: list[Rule] = []
        self._requests: list[RecordedRequest] = []
        self._server = ThreadedASGIServer(self._app, host=host, port=port, name="scripted-llm")

    # -- scripting -----------------------------------------------------------------------------

    def script(
        self,
        match: str | Predicate | None = None,
        *,
        text: TextSource | None = None,
        tool_call: ToolCall | tuple[str, dict[str, Any]] | None = None,
        tool_calls: Iterable[ToolCall | tuple[str, dict[str, Any]]] = (),
        then: TextSource | None = None,
        status: int | None = None,
        error: str = "scripted failure",
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        chunks: int | None = None,
        times: int | None = None,
        once: bool = False,
        usage: bool = True,
        tool_rounds: int = 1,
    ) -> Rule:
        """Add a rule; the first matching rule (in the order added) answers.

        ``match`` is a substring of the last user message, a predicate over the messages, or
        ``None`` for every chat request. The reply is ``text`` (a string or a function of the
        messages; default: the default reply), or ``tool_calls`` while no ``tool`` message follows
        the last user message and ``then`` afterwards (``{tool_output}`` in it is replaced by the
        tool messages' text; default: the default reply), or an HTTP ``status`` error with
        ``error`` as message. ``delay`` waits before the first byte, ``chunk_delay`` between
        stream chunks, ``chunks`` splits the streamed text into that many pieces (default: one per
        word). ``once`` (or ``times=N``) retires the rule after that many final answers; the
        tool-call step of a rule does not count as a use. ``usage=False`` leaves usage out of
        its answers (streamed or not). ``tool_rounds`` asks for the tool calls again until that
        many rounds of ``tool`` messages follow the last user message (a model that keeps
        calling tools: give a large number).
        """
        calls = list(tool_calls)
        if tool_call is not None:
            calls.insert(0, tool_call)
        rule = Rule(
            match=match,
            text=text,
            tool_calls=[c if isinstance(c, ToolCall) else ToolCall(*c) for c in calls],
            then=then,
            status=status,
            error=error,
            delay=delay,
            chunk_delay=chunk_delay,
            chunks=chunks,
            times=1 if once else times,
            usage=usage,
            tool_rounds=tool_rounds,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def reset(self) -> None:
        """Forget all rules and recorded requests."""
        with self._lock:
            self._rules.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Chat completion requests, without the Llama Guard and topic checks."""
        return [
            r
            for r in self.requests
            if r.path.endswith("/chat/completions")
            and not r.is_guard_check
            and not r.is_topic_check
            and not r.is_titles_request
        ]

    @property
    def titles_requests(self) -> list[RecordedRequest]:
        """The topic-titles requests received (see :data:`TITLES_MARKER`)."""
        return [r for r in self.requests if r.is_titles_request]

    @property
    def topic_check_requests(self) -> list[RecordedRequest]:
        """The question-validity checks received (see :data:`TOPIC_CHECK_MARKER`)."""
        return [r for r in self.requests if r.is_topic_check]

    @property
    def guard_requests(self) -> list[RecordedRequest]:
        """The Llama Guard safety checks received."""
        return [r for r in self.requests if r.is_guard_check]

    def _answer(self, messages: Messages, prompt_text: str) -> _Answer:
        if GUARD_PROMPT_MARKER in prompt_text:
            return _Answer(text="unsafe\nS1" if UNSAFE_MARKER in prompt_text else "safe",
                           usage=self.report_usage)
        if TOPIC_CHECK_MARKER in prompt_text:
            return _Answer(text="ALLOWED" if ON_TOPIC_MARKER in prompt_text else "REJECTED",
                           usage=self.report_usage)
        titles = TITLES_MARKER in prompt_text
        with self._lock:
            rule = next((r for r in self._rules if (callable(r.match) or not titles)
                         and r.matches(messages)), None)
            if rule is None and titles:
                return _Answer(text=titles_reply(messages), usage=self.report_usage)
            if rule is None:
                return _Answer(text=default_reply(messages), usage=self.report_usage)
            answer = _Answer(
                delay=rule.delay, chunk_delay=rule.chunk_delay, chunks=rule.chunks,
                usage=rule.usage and self.report_usage,
            )
            if rule.status is not None:
                answer.status, answer.error = rule.status, rule.error
            elif rule.tool_calls and (len(_tool_outputs(messages))
                                      < rule.tool_rounds * len(rule.tool_calls)):
                answer.tool_calls = list(rule.tool_calls)
                return answer
            elif rule.tool_calls:
                answer.text = _render(rule.then, messages) if rule.then else ""
            else:
                answer.text = _render(rule.text, messages) if rule.text else ""
            if not answer.text and answer.status is None:
                answer.text = default_reply(messages)
            rule.used += 1
            return answer

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        return f"http://{self._server.host}:{self._server.port}/v1"

    def start(self) -> ScriptedLLM:
        """Bind a port and serve from a daemon thread; returns once the socket listens."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        self._server.stop()

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- HTTP ----------------------------------------------------------------------------------

    def _app(self) -> Quart:
        app = Quart("lcore-scripted-llm")

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            self._record({})
            return {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "lcore-testing"}
                    for name in (self.model, self.embedding_model)
                ],
            }

        @app.get("/v1/version")
        async def version() -> dict[str, Any]:
            # Llama Stack's version probe, for tests that use this server as its stand-in.
            return {"version": SCRIPTED_VERSION}

        @app.post("/v1/chat/completions")
        async def chat_completions() -> Response | tuple[dict[str, Any], int]:
            body = await request.get_json(force=True) or {}
            self._record(body)
            messages = body.get("messages") or []
            prompt_text = "\n".join(message_text(m) for m in messages)
            answer = self._answer(messages, prompt_text)
            return await self._respond(body, answer, _prompt_tokens(messages), chat=True)

        @app.post("/v1/completions")
        async def completions() -> Response | tuple[dict[str, Any], int]:
            body = await request.get_json(force=True) or {}
            self._record(body)
            prompt = body.get("prompt", "")
            prompt = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
            messages = [{"role": "user", "content": prompt}]
            answer = self._answer(messages, prompt)
            return await self._respond(body, answer, count_words(prompt), chat=False)

        @app.post("/v1/embeddings")
        async def embeddings() -> dict[str, Any] | tuple[dict[str, Any], int]:
            body = await request.get_json(force=True) or {}
            self._record(body)
            inputs = body.get("input", [])
            if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
                inputs = [inputs]
            dimension = int(body.get("dimensions") or self.embedding_dimension)
            data = []
            tokens = 0
            for index, item in enumerate(inputs):
                # token-id input: treat each id as a word so the vector is still deterministic
                text = item if isinstance(item, str) else " ".join(f"t{t}" for t in item)
                tokens += count_words(text)
                vector = embed(text, dimension)
                encoded: list[float] | str = vector
                if body.get("encoding_format") == "base64":
                    # the openai SDK asks for base64 little-endian float32 by default
                    encoded = base64.b64encode(struct.pack(f"<{dimension}f", *vector)).decode()
                data.append({"object": "embedding", "index": index, "embedding": encoded})
            return {
                "object": "list",
                "data": data,
                "model": body.get("model", self.embedding_model),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }

        return app

    def _record(self, body: dict[str, Any]) -> None:
        entry = RecordedRequest(
            method=request.method,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        with self._lock:
            self._requests.append(entry)

    async def _respond(
        self, body: dict[str, Any], answer: _Answer, prompt_tokens: int, *, chat: bool
    ) -> Response | tuple[dict[str, Any], int]:
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.status is not None:
            error = {"message": answer.error, "type": "scripted_error", "code": answer.status}
            return {"error": error}, answer.status
        if answer.tool_calls:
            completion_tokens = sum(count_words(json.dumps(c.arguments)) for c in answer.tool_calls)
        else:
            completion_tokens = count_words(answer.text)
        usage: dict[str, int] | None = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        } if answer.usage else None
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        model = body.get("model", self.model)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = self._chunks(ident, model, answer, usage if include_usage else None, chat)
            response = Response(_sse(chunks), mimetype="text/event-stream")
            response.headers["Cache-Control"] = "no-cache"
            response.timeout = None
            return response
        return _full_response(ident, model, answer, usage, chat), 200

    async def _chunks(
        self,
        ident: str,
        model: str,
        answer: _Answer,
        usage: dict[str, int] | None,
        chat: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
            choices = [] if choice is None else [{"index": 0, "logprobs": None, **choice}]
            return {"id": ident, "object": obj, "created": created, "model": model,
                    "choices": choices, **extra}

        if chat:
            yield chunk({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        if answer.tool_calls:
            for index, call in enumerate(answer.tool_calls):
                delta = {"tool_calls": [{"index": index, **_tool_call_json(call)}]}
                yield chunk({"delta": delta, "finish_reason": None})
            finish = "tool_calls"
        else:
            for number, piece in enumerate(_split(answer.text, answer.chunks)):
                if number and answer.chunk_delay:
                    await asyncio.sleep(answer.chunk_delay)
                if chat:
                    yield chunk({"delta": {"content": piece}, "finish_reason": None})
                else:
                    yield chunk({"text": piece, "finish_reason": None})
            finish = "stop"
        if chat:
            yield chunk({"delta": {}, "finish_reason": finish})
        else:
            yield chunk({"text": "", "finish_reason": finish})
        if usage is not None:
            yield chunk(None, usage=usage)


def _tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:16]}",
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }


def _full_response(
    ident: str, model: str, answer: _Answer, usage: dict[str, int] | None, chat: bool
) -> dict[str, Any]:
    extra = {} if usage is None else {"usage": usage}
    if not chat:
        choice = {"index": 0, "text": answer.text, "finish_reason": "stop", "logprobs": None}
        return {"id": ident, "object": "text_completion", "created": int(time.time()),
                "model": model, "choices": [choice], **extra}
    message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
    finish = "stop"
    if answer.tool_calls:
        finish = "tool_calls"
        message["tool_calls"] = [_tool_call_json(c) for c in answer.tool_calls]
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        **extra,
    }


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for item in chunks:
        yield f"data: {json.dumps(item)}\n\n".encode()
    yield b"data: [DONE]\n\n"
