"""New Llama Stack conversations made ahead of need, so a first turn costs one backend call.

Used only with `service.conversation_state: llama_stack_conversation` (chained conversations,
the default, need no create).

A new conversation needs `POST /v1/conversations` before the Responses call. The pool keeps a few
created in the background: a query takes one (no wait), and the refill starts once its answer is
in (or at once when the pool ran dry).
Without a pooled one (a burst, or Llama Stack was down) the query creates its own, as before.
Unused pooled conversations are deleted at shutdown (best effort: an empty conversation left
behind by a crash costs Llama Stack one small row).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import structlog

from lcore_core import tracing
from lcore_core.warmup import FirstCallsAlone

log = structlog.get_logger("lcore.convpool")


class ConversationPool:
    def __init__(self, llama: Any, size: int = 4) -> None:
        self.llama = llama
        self.size = size
        self.ready: deque[str] = deque()
        self._refill: asyncio.Task[None] | None = None
        # Llama Stack 0.7 makes its conversations table on first use, and concurrent first
        # creates race on it ("no such table", a 500 each).
        self._first = FirstCallsAlone()

    async def take(self) -> str:
        """A new conversation id: a pooled one, else one created now (errors propagate)."""
        if self.ready:
            return self.ready.popleft()
        # Created before the refill starts (see `_first`). Only this call is traced: the
        # request waits for it, not for the refills.
        with tracing.span("llama_stack.conversations.create"):
            conversation_id = await self._create()
        self.top_up()  # ran dry: refill now
        return conversation_id

    def top_up(self) -> None:
        """Refill in the background, up to `size`. The pipeline calls this once a turn has its
        answer: a refill started while the answer is being made would compete with it for
        Llama Stack (its conversation writes and the answer's share one SQLite store)."""
        if self.size > 0 and len(self.ready) < self.size and (
                self._refill is None or self._refill.done()):
            self._refill = asyncio.get_running_loop().create_task(self._fill())

    async def _create(self) -> str:
        admitted = await self._first.admit()
        created = False
        try:
            conversation_id = await self._create_now()
            created = True
            return conversation_id
        finally:
            self._first.settle(admitted, created)

    async def _create_now(self) -> str:
        conversation = await self.llama.client.conversations.create()
        return str(conversation.id)

    async def _fill(self) -> None:
        try:
            while len(self.ready) < self.size:
                self.ready.append(await self._create())
        except Exception as exc:  # Llama Stack down: queries create their own meanwhile
            log.warning("conversation pool refill failed", error=f"{type(exc).__name__}: {exc}")

    async def wait_filled(self) -> None:
        """Wait for a running refill (tests, shutdown)."""
        if self._refill is not None:
            with contextlib.suppress(Exception):
                await self._refill

    async def drain(self, timeout: float = 5.0) -> None:
        """Stop refilling and delete the unused conversations."""
        if self._refill is not None and not self._refill.done():
            self._refill.cancel()
            with contextlib.suppress(BaseException):
                await self._refill
        unused, self.ready = list(self.ready), deque()
        if not unused or self.llama._client is None:
            return

        async def delete(conversation_id: str) -> None:
            with contextlib.suppress(Exception):
                await self.llama.client.conversations.delete(conversation_id)

        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(delete(c) for c in unused)), timeout)
