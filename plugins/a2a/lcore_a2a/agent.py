"""A2A messages and tasks on top of LCore's query pipeline (the one `/v2/query` runs).

One A2A message is one task and one pipeline turn: `message/send` is prepare -> run -> finish,
`message/stream` is prepare -> stream; quota, RAG, MCP, shields, metrics and the cache all come
with it. A `contextId` maps to an LCore conversation once its first turn completed.

Errors of the pipeline (quota exceeded, unknown conversation, Llama Stack down) end the task
`failed`, with the reason in its status message and `metadata.error`; protocol errors (bad
params, unknown task) are JSON-RPC errors raised as `RpcError`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import structlog
from a2a.types import (
    Artifact,
    ContentTypeNotSupportedError,
    DataPart,
    FilePart,
    FileWithBytes,
    InvalidParamsError,
    Message,
    MessageSendParams,
    Part,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskNotCancelableError,
    TaskNotFoundError,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
    TextPart,
)
from marshmallow import ValidationError

from lcore_a2a.jsonrpc import RpcError
from lcore_a2a.store import ContextRecord, ContextStore, TaskRecord
from lcore_core import Action, LCoreError, may
from lcore_core import api as pipeline  # the query pipeline's public face
from lcore_core.api import MAX_ATTACHMENTS, QueryRequestSchema

if TYPE_CHECKING:
    from lcore_core import AuthTuple, Runtime

log = structlog.get_logger("lcore.a2a")

# Metric and quota labels of A2A turns (the core counts a turn as streaming when the endpoint
# label contains "streaming").
SEND_ENDPOINT = "/a2a message/send"
STREAM_ENDPOINT = "/a2a message/stream (streaming)"
TERMINAL = frozenset({TaskState.completed, TaskState.canceled, TaskState.failed,
                      TaskState.rejected})
# Query fields a client may set in `params.metadata` (validated like a `/v2/query` body).
QUERY_FIELDS = ("model", "provider", "system_prompt", "no_tools", "vector_store_ids",
                "shield_ids", "generate_topic_summary")
TEXT_MIME_PREFIXES = ("text/",)
TEXT_MIME_TYPES = ("application/json", "application/yaml", "application/x-yaml",
                   "application/xml")
ARTIFACT_NAME = "response"
CLIENT_GONE = "The client went away"
_QUERY_SCHEMA = QueryRequestSchema()  # made once: making one deep-copies its fields


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Canceled(Exception):
    """`tasks/cancel` stopped the running task."""


@dataclass
class Turn:
    """One A2A message being answered: its task and the query it became."""

    auth: AuthTuple
    task: Task
    user_message: Message
    body: dict[str, Any]
    history_length: int | None = None
    plan: pipeline.QueryPlan | None = None
    llm_seconds: float = 0.0
    artifact_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def task_id(self) -> str:
        return self.task.id

    @property
    def context_id(self) -> str:
        return self.task.context_id


class A2AService:
    """The plugin's running state: the context store and the tasks running in this process."""

    def __init__(self, runtime: Runtime, store: ContextStore) -> None:
        self.runtime = runtime
        self.store = store
        self._cancels: dict[str, asyncio.Event] = {}

    # --- starting a turn ------------------------------------------------------------------

    async def begin(self, auth: AuthTuple, params: MessageSendParams) -> Turn:
        """Validate the message, find its conversation and create the task (not yet stored)."""
        message = params.message
        query, attachments = message_input(message)
        # Ids are looked up among the caller's own only: another user's context or task id is
        # simply unknown here (a new context), so it reveals nothing and takes nothing over.
        context_id = message.context_id \
            or await self._context_of(auth, message.task_id) or uuid.uuid4().hex
        known = await self.store.get_context(auth.user_id, context_id)
        raw: dict[str, Any] = {k: v for k, v in (params.metadata or {}).items()
                               if k in QUERY_FIELDS}
        raw.update(query=query, conversation_id=known.conversation_id if known else None)
        if attachments:
            raw["attachments"] = attachments
        try:
            body = _QUERY_SCHEMA.load(raw)
        except ValidationError as exc:
            raise RpcError(InvalidParamsError(data=_messages(exc.messages))) from None
        task_id = str(uuid.uuid4())
        user_message = message.model_copy(update={"context_id": context_id,
                                                  "task_id": task_id})
        task = Task(id=task_id, context_id=context_id, history=[user_message],
                    status=TaskStatus(state=TaskState.submitted, timestamp=now_iso()))
        config = params.configuration
        return Turn(auth, task, user_message, body,
                    history_length=config.history_length if config else None)

    async def _context_of(self, auth: AuthTuple, task_id: str | None) -> str | None:
        """A message that names an earlier task of the caller's continues that task's context."""
        if not task_id:
            return None
        record = await self.store.get_task(auth.user_id, task_id)
        return record.context_id if record else None

    async def prepare(self, turn: Turn, *, endpoint: str, client_mcp_headers: dict[str, Any],
                      request_headers: dict[str, str]) -> None:
        """The pipeline's prepare step; the task is stored as `working`."""
        turn.plan = await pipeline.prepare(
            self.runtime, turn.auth, turn.body, endpoint=endpoint,
            client_mcp_headers=client_mcp_headers, request_headers=request_headers)
        turn.task.status = TaskStatus(state=TaskState.working, timestamp=now_iso())
        turn.task.metadata = {"conversation_id": turn.plan.conversation_id,
                              "provider": turn.plan.provider, "model": turn.plan.model}
        await self._save(turn)

    # --- message/send -----------------------------------------------------------------------

    async def send(self, turn: Turn) -> Task:
        """Run a prepared turn to its end (blocking) and return the final task."""
        plan = turn.plan
        assert plan is not None
        cancel = self._running(turn.task_id)
        try:
            result = await race(pipeline.run(self.runtime, plan), cancel)
            turn.llm_seconds = result.llm_seconds
            quotas = await pipeline.finish(self.runtime, plan, result)
        except Canceled:
            await self._release(plan)
            return await self.cancelled(turn)
        except asyncio.CancelledError:  # the client went away
            await self._release(plan)
            await asyncio.shield(self.cancelled(turn, CLIENT_GONE))
            raise
        except LCoreError as exc:
            return await self.failed(turn, exc)
        finally:
            self._cancels.pop(turn.task_id, None)
        return await self.completed(turn, result.response, _outcome(plan, result, quotas))

    # --- message/stream -----------------------------------------------------------------------

    async def stream(self, turn: Turn) -> AsyncIterator[Task | TaskStatusUpdateEvent |
                                                         TaskArtifactUpdateEvent]:
        """A prepared turn as A2A events: the task, `working` updates with the text as it
        comes (and tool calls), the answer as an artifact, and a final status update."""
        plan = turn.plan
        assert plan is not None
        cancel = self._running(turn.task_id)
        submitted = turn.task.model_copy(deep=True)
        submitted.status = TaskStatus(state=TaskState.submitted, timestamp=now_iso())
        # The pipeline's stream is an async generator: closing it ends the turn cleanly.
        events = cast(AsyncGenerator[pipeline.StreamEvent, None],
                      pipeline.stream(self.runtime, plan))
        try:
            yield self.view(submitted, turn.history_length)
            yield self._update(turn, TaskStatus(state=TaskState.working, timestamp=now_iso()),
                               metadata=dict(turn.task.metadata or {}))
            answer, end = "", None
            while end is None:
                try:
                    more, event = await race(_step(events), cancel)
                except Canceled:
                    task = await self.cancelled(turn)
                    yield self._update(turn, task.status, final=True)
                    return
                if not more:
                    break
                if event.event == "token":
                    yield self._update(turn, self._working(turn, event.data["token"]))
                elif event.event == "tool_call":
                    yield self._update(
                        turn, self._working(turn, f"Calling tool: {event.data['name']}"),
                        metadata={"tool_call": event.data})
                elif event.event == "tool_result":
                    yield self._update(turn, TaskStatus(state=TaskState.working,
                                                        timestamp=now_iso()),
                                       metadata={"tool_result": event.data})
                elif event.event == "turn_complete":
                    answer = event.data.get("token") or ""
                elif event.event == "end":
                    end = event.data
                elif event.event == "error":
                    task = await self.failed(turn, LCoreError(
                        str(event.data.get("response")), str(event.data.get("cause") or ""),
                        extra={"status_code": event.data.get("status_code")}))
                    yield self._update(turn, task.status, final=True,
                                       metadata=dict(task.metadata or {}))
                    return
            if end is None:  # the pipeline always ends with "end" or "error"; be safe anyway
                task = await self.failed(turn, LCoreError("The answer stream ended early"))
                yield self._update(turn, task.status, final=True)
                return
            outcome = {"conversation_id": plan.conversation_id, "provider": plan.provider,
                       "model": plan.model, "input_tokens": end.get("input_tokens", 0),
                       "output_tokens": end.get("output_tokens", 0),
                       "referenced_documents": end.get("referenced_documents") or [],
                       "available_quotas": end.get("available_quotas") or {}}
            task = await self.completed(turn, answer, outcome)
            assert task.artifacts
            yield TaskArtifactUpdateEvent(task_id=turn.task_id, context_id=turn.context_id,
                                          artifact=task.artifacts[0], append=False,
                                          last_chunk=True)
            yield self._update(turn, task.status, final=True,
                               metadata=dict(task.metadata or {}))
        finally:
            self._cancels.pop(turn.task_id, None)
            # A client that went away closes this generator: the pipeline releases the quota
            # and stores nothing, and the task ends canceled.
            await events.aclose()
            if turn.task.status.state not in TERMINAL:
                await asyncio.shield(self.cancelled(turn, CLIENT_GONE))

    async def failed_stream(self, turn: Turn, task: Task) -> AsyncIterator[
            Task | TaskStatusUpdateEvent]:
        """The events of a turn that failed before it started: the task, then its end."""
        submitted = task.model_copy(deep=True)
        submitted.status = TaskStatus(state=TaskState.submitted, timestamp=now_iso())
        yield submitted
        yield self._update(turn, task.status, final=True, metadata=dict(task.metadata or {}))

    @staticmethod
    def _working(turn: Turn, text: str) -> TaskStatus:
        return TaskStatus(state=TaskState.working, timestamp=now_iso(),
                          message=agent_message(text, turn))

    @staticmethod
    def _update(turn: Turn, status: TaskStatus, *, final: bool = False,
                metadata: dict[str, Any] | None = None) -> TaskStatusUpdateEvent:
        return TaskStatusUpdateEvent(task_id=turn.task_id, context_id=turn.context_id,
                                     status=status, final=final, metadata=metadata or None)

    # --- ending a turn ------------------------------------------------------------------------

    async def completed(self, turn: Turn, answer: str, outcome: dict[str, Any]) -> Task:
        plan = turn.plan
        assert plan is not None
        # From now on the context continues this conversation (also after a restart).
        await self.store.save_context(ContextRecord(turn.context_id, turn.auth.user_id,
                                                    plan.conversation_id))
        message = agent_message(answer, turn)
        turn.task.status = TaskStatus(state=TaskState.completed, message=message,
                                      timestamp=now_iso())
        turn.task.artifacts = [Artifact(artifact_id=turn.artifact_id, name=ARTIFACT_NAME,
                                        parts=[Part(root=TextPart(text=answer))])]
        turn.task.metadata = outcome
        await self._save(turn)
        return self.view(turn.task, turn.history_length)

    async def failed(self, turn: Turn, exc: LCoreError) -> Task:
        status_code = exc.extra.get("status_code") or exc.status
        text = f"{exc.response}: {exc.cause}" if exc.cause else exc.response
        turn.task.status = TaskStatus(state=TaskState.failed, timestamp=now_iso(),
                                      message=agent_message(text, turn))
        turn.task.metadata = {**(turn.task.metadata or {}), "error": {
            "status_code": status_code, "response": exc.response, "cause": exc.cause}}
        await self._save(turn)
        return self.view(turn.task, turn.history_length)

    async def cancelled(self, turn: Turn, reason: str = "Canceled on request") -> Task:
        turn.task.status = TaskStatus(state=TaskState.canceled, timestamp=now_iso(),
                                      message=agent_message(reason, turn))
        await self._save(turn)
        return self.view(turn.task, turn.history_length)

    async def _save(self, turn: Turn) -> None:
        await self.store.save_task(TaskRecord(
            turn.task_id, turn.context_id, turn.auth.user_id,
            turn.task.model_dump(mode="json", exclude_none=True)))

    async def _release(self, plan: pipeline.QueryPlan) -> None:
        """Give back the quota reserved for a turn canceled before the LLM answered."""
        await pipeline.release(self.runtime, plan.auth, plan.ticket)

    def _running(self, task_id: str) -> asyncio.Event:
        cancel = asyncio.Event()
        self._cancels[task_id] = cancel
        return cancel

    # --- tasks/get and tasks/cancel -----------------------------------------------------------

    async def get(self, auth: AuthTuple, task_id: str,
                  history_length: int | None = None) -> Task:
        record = await self._owned(auth, task_id)
        return self.view(Task.model_validate(record.task), history_length)

    async def cancel(self, auth: AuthTuple, task_id: str) -> Task:
        """Stop a task running in this process; a task elsewhere is only marked canceled."""
        record = await self._owned(auth, task_id)
        task = Task.model_validate(record.task)
        if task.status.state in TERMINAL:
            raise RpcError(TaskNotCancelableError(
                data=f"task {task_id} is already {task.status.state.value}"))
        running = self._cancels.get(task_id)
        if running is not None:
            running.set()
        task.status = TaskStatus(state=TaskState.canceled, timestamp=now_iso(),
                                 message=agent_message("Canceled on request", None,
                                                       task.context_id, task.id))
        await self.store.save_task(TaskRecord(record.task_id, record.context_id,
                                              record.user_id,
                                              task.model_dump(mode="json", exclude_none=True)))
        return task

    async def _owned(self, auth: AuthTuple, task_id: str) -> TaskRecord:
        """The task, if the caller may see it; otherwise the very error of an unknown task."""
        owner = None if may(auth, Action.READ_OTHERS_CONVERSATIONS) else auth.user_id
        record = await self.store.get_task(owner, task_id)
        if record is None:
            raise RpcError(TaskNotFoundError(data=f"task {task_id} does not exist"))
        return record

    @staticmethod
    def view(task: Task, history_length: int | None) -> Task:
        """The task as returned to a client: at most `history_length` history messages."""
        if history_length is None or task.history is None:
            return task
        shown = task.model_copy()
        shown.history = task.history[-history_length:] if history_length > 0 else []
        return shown


async def race[R](awaitable: Awaitable[R], cancel: asyncio.Event) -> R:
    """The awaitable's result, unless `cancel` is set first: then it is cancelled and
    `Canceled` raised."""
    job = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request was cancelled: so is the job, and it cleans up first
        stopper.cancel()
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        raise
    stopper.cancel()
    if not job.done():
        job.cancel()
        # Let the cancelled job run its clean-up (an async generator's `finally`).
        await asyncio.gather(job, return_exceptions=True)
        raise Canceled
    return job.result()


async def _step(events: AsyncIterator[pipeline.StreamEvent]) -> tuple[bool, Any]:
    try:
        return True, await events.__anext__()
    except StopAsyncIteration:
        return False, None


def _outcome(plan: pipeline.QueryPlan, result: pipeline.QueryResult,
             quotas: dict[str, int]) -> dict[str, Any]:
    return {"conversation_id": plan.conversation_id, "provider": plan.provider,
            "model": plan.model, "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "referenced_documents": result.referenced_documents,
            "available_quotas": quotas}


def agent_message(text: str, turn: Turn | None, context_id: str | None = None,
                  task_id: str | None = None) -> Message:
    return Message(message_id=uuid.uuid4().hex, role=Role.agent,
                   parts=[Part(root=TextPart(text=text))],
                   context_id=turn.context_id if turn else context_id,
                   task_id=turn.task_id if turn else task_id)


def message_input(message: Message) -> tuple[str, list[dict[str, str]]]:
    """The query text (text parts) and attachments (data parts, textual file parts)."""
    texts: list[str] = []
    attachments: list[dict[str, str]] = []
    files = sum(1 for p in message.parts if not isinstance(p.root, TextPart))
    if files > MAX_ATTACHMENTS:  # before decoding any of them
        raise RpcError(InvalidParamsError(
            data=f"attachments: at most {MAX_ATTACHMENTS} attachments per request (got {files} "
                 "file and data parts)"))
    for part in message.parts:
        inner = part.root
        if isinstance(inner, TextPart):
            texts.append(inner.text)
        elif isinstance(inner, DataPart):
            attachments.append({"attachment_type": "data", "content_type": "application/json",
                                "content": json.dumps(inner.data, ensure_ascii=False)})
        elif isinstance(inner, FilePart):
            attachments.append(_file_attachment(inner))
    query = "\n".join(t for t in texts if t.strip())
    if not query:
        raise RpcError(InvalidParamsError(data="the message has no text part"))
    return query, attachments


def _file_attachment(part: FilePart) -> dict[str, str]:
    file = part.file
    mime = (file.mime_type or "text/plain").split(";")[0].strip().lower()
    textual = mime.startswith(TEXT_MIME_PREFIXES) or mime in TEXT_MIME_TYPES
    if not isinstance(file, FileWithBytes) or not textual:
        raise RpcError(ContentTypeNotSupportedError(
            data=f"only inline text files are accepted (got {mime}"
                 f"{'' if isinstance(file, FileWithBytes) else ' by URI'})"))
    try:
        content = base64.b64decode(file.bytes, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise RpcError(InvalidParamsError(
            data=f"file {file.name or ''} is not base64-encoded UTF-8 text")) from None
    return {"attachment_type": "file", "content_type": mime, "content": content}


def _messages(messages: Any) -> str:
    if isinstance(messages, dict):
        return "; ".join(f"{k}: {_messages(v)}" for k, v in messages.items())
    if isinstance(messages, list):
        return " ".join(_messages(m) for m in messages)
    return str(messages)

