"""Topic summaries of new conversations: cheap, batched and bounded background LLM calls.

A new conversation's title comes from one chat completion that keeps nothing in Llama Stack (no
stored response, no conversation), sent only the first user text, cut to `max_input_chars`,
with a short instruction and a small `max_output_tokens`. Titles asked for within
`batch_window_ms` of each other share one call: the questions go as a numbered list and the
numbered reply is split back (an item the reply leaves out gets no title).

At most `max_concurrent_calls` such calls run at once and at most `max_queued` titles wait;
past that a title is skipped, logged and counted in `ls_background_llm_skipped_total`. Nothing
here is on an answer's path: `request()` returns at once. The call's tokens are charged to the
callers' quotas (an even share each) when `charge_quota` is on, and counted in the token
metrics with the endpoint label `topic_summary`.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from lcore_core import tracing
from lcore_core.errors import LCoreError
from lcore_core.events import QuotaTicket, Usage
from lcore_core.llama import llama_errors

if TYPE_CHECKING:
    from lcore_core.auth import AuthTuple
    from lcore_core.runtime import Runtime

log = structlog.get_logger("lcore.summaries")

PURPOSE = "topic_summary"
# Why a title was not written (the `reason` label of ls_background_llm_skipped_total).
QUEUE_FULL, FAILED, NO_TITLE, SHUTDOWN = "queue_full", "failed", "no_title", "shutdown"
# The instruction; the scripted LLM (lcore_core.testing.llm) recognises its first words.
INSTRUCTION = ("Write numbered topic titles. For each numbered question below, answer with one "
               "line: the same number, a period, then a short title of at most 8 words for "
               "that question, with no punctuation at the end. Answer with those lines only.")
MAX_TITLE_CHARS = 200
_NUMBERED = re.compile(r"^\s*(\d+)\s*[.):-]\s*(.*?)\s*$")


@dataclass(eq=False)
class Item:
    """One title to write: whose conversation, what was asked, whom to charge."""

    auth: AuthTuple
    quota_auth: AuthTuple
    conversation_id: str
    question: str
    provider: str
    model: str
    model_id: str
    since: float = field(default_factory=time.monotonic)
    # The request's trace, so the call's span joins it (see tracing.background_context).
    context: contextvars.Context = field(default_factory=tracing.background_context)


def prompt(questions: list[str]) -> str:
    """The user message of one call: the questions as a numbered list, one line each."""
    return "\n".join(f"{n}. {' '.join(q.split())}" for n, q in enumerate(questions, start=1))


def split_titles(reply: str, count: int) -> list[str | None]:
    """The numbered reply to `count` questions, one title (or None) per question, in order.

    Lines that are not `<n>. <title>` with 1 <= n <= count are ignored; the first title of a
    number wins. A reply to a single question may also be the bare title.
    """
    titles: list[str | None] = [None] * count
    for line in reply.splitlines():
        found = _NUMBERED.match(line)
        if found is None:
            continue
        index = int(found.group(1)) - 1
        if 0 <= index < count and titles[index] is None:
            titles[index] = clean(found.group(2))
    if count == 1 and titles[0] is None:
        first = next((line for line in reply.splitlines() if line.strip()), "")
        titles[0] = clean(first)
    return titles


def clean(title: str) -> str | None:
    text = title.strip().lstrip("\"'* ").rstrip("\"'*. ")
    return text[:MAX_TITLE_CHARS] or None


def shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` whole shares that differ by at most one and add up."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class TopicSummaries:
    """The queue of titles to write and the calls that write them (`runtime.summaries`)."""

    def __init__(self, runtime: Runtime, settings: Any) -> None:
        self.runtime = runtime
        self.settings = settings
        self.waiting: list[Item] = []
        self.running = 0
        # Each running call and the batch it writes.
        self.calls: dict[asyncio.Task[None], list[Item]] = {}
        self._timer: asyncio.TimerHandle | None = None
        # Set while draining: what waits goes out without waiting for its batch window.
        self.hurry = False

    def request(self, item: Item) -> None:
        """Ask for a title; never waits. A full queue skips it (logged and counted)."""
        self.waiting.append(item)
        self._kick()
        # What a free call slot took at once never waited: only the rest counts as queued.
        if len(self.waiting) > self.settings.max_queued:
            self.waiting.remove(item)
            self.skipped(QUEUE_FULL, [item])

    def skipped(self, reason: str, items: list[Item]) -> None:
        self.runtime.metrics.background_skipped.labels(PURPOSE, reason).inc(len(items))
        log.warning("topic summary skipped", reason=reason, count=len(items),
                    conversation_ids=[i.conversation_id for i in items][:8])

    def _kick(self) -> None:
        """Start the calls that are due and may run; else wake up when the next one is due."""
        window = self.settings.batch_window_ms / 1000
        while self.waiting and self.running < self.settings.max_concurrent_calls:
            due = self.waiting[0].since + window - time.monotonic()
            if due > 0 and not self.hurry and len(self.waiting) < self.settings.batch_size:
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(due, self._woken)
                return
            self._launch(self._take())

    def _woken(self) -> None:
        self._timer = None
        self._kick()

    def _take(self) -> list[Item]:
        """The next batch: up to `batch_size` waiting items for the oldest one's model."""
        # With a model of its own for titles, any titles go together.
        model_id = None if self.settings.model else self.waiting[0].model_id
        batch = [i for i in self.waiting
                 if model_id in (None, i.model_id)][:self.settings.batch_size]
        taken = {id(i) for i in batch}
        self.waiting = [i for i in self.waiting if id(i) not in taken]
        return batch

    def _launch(self, batch: list[Item]) -> None:
        self.running += 1
        task = asyncio.get_running_loop().create_task(self._call(batch),
                                                      context=batch[0].context)
        self.calls[task] = batch
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.calls.pop(task, None)
        self.running -= 1
        if not task.cancelled() and task.exception() is not None:
            log.error("topic summary call crashed", error=repr(task.exception()))
        self._kick()

    async def drain(self, timeout: float) -> None:
        """Write what waits now (no batch window), wait up to `timeout` s, cancel the rest."""
        self.hurry = True
        try:
            deadline = time.monotonic() + timeout
            self._kick()
            while self.calls and (left := deadline - time.monotonic()) > 0:
                await asyncio.wait(set(self.calls), timeout=left)
            dropped = self.waiting + [i for batch in self.calls.values() for i in batch]
            self.waiting = []
            late = set(self.calls)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
            if dropped:
                self.skipped(SHUTDOWN, dropped)
        finally:
            self.hurry = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    # --- one call -------------------------------------------------------------------------

    async def _call(self, batch: list[Item]) -> None:
        first = batch[0]
        provider, model, model_id = first.provider, first.model, first.model_id
        if self.settings.model:
            from lcore_core.pipeline import select_model

            try:
                model_id, provider, model = await select_model(
                    self.runtime, first.auth, {},
                    preferred=(self.settings.model, self.settings.provider))
            except LCoreError as exc:
                log.warning("topic summary model unavailable", error=exc.cause)
                self.skipped(FAILED, batch)
                return
        limit = self.settings.max_input_chars
        body = {"messages": [{"role": "system", "content": INSTRUCTION},
                             {"role": "user",
                              "content": prompt([i.question[:limit] for i in batch])}],
                "max_tokens": self.settings.max_output_tokens * len(batch), "stream": False}
        metrics, labels = self.runtime.metrics, (provider, model, PURPOSE)
        started = time.perf_counter()
        try:
            with llama_errors("chat.completions.create", {"gen_ai.request.model": model_id,
                                                          "lcore.purpose": PURPOSE}):
                reply = await self.runtime.llama.chat({"model": model_id, **body},
                                                      tracing.outgoing_headers())
        except LCoreError as exc:
            metrics.llm_failures.labels(*labels).inc()
            log.warning("topic summary call failed", error=f"{exc.response}: {exc.cause}")
            self.skipped(FAILED, batch)
            return
        metrics.llm_calls.labels(*labels).inc()
        metrics.llm_duration.labels(*labels).observe(time.perf_counter() - started)
        usage = reply.get("usage") or {}
        sent, received = int(usage.get("prompt_tokens") or 0), int(
            usage.get("completion_tokens") or 0)
        metrics.tokens_sent.labels(*labels).inc(sent)
        metrics.tokens_received.labels(*labels).inc(received)
        choices = reply.get("choices") or [{}]
        text = str((choices[0].get("message") or {}).get("content") or "")
        titles = split_titles(text, len(batch))
        if self.settings.charge_quota and (sent or received):
            await self._charge(batch, sent, received)
        untitled = [i for i, t in zip(batch, titles, strict=True) if not t]
        if untitled:
            self.skipped(NO_TITLE, untitled)
        for item, title in zip(batch, titles, strict=True):
            if title:
                await self._store(item, title)

    async def _charge(self, batch: list[Item], sent: int, received: int) -> None:
        """Each caller pays an even share of the call's tokens."""
        for item, i, o in zip(batch, shares(sent, len(batch)), shares(received, len(batch)),
                              strict=True):
            try:
                await self.runtime.plugins.quota_consume(
                    item.quota_auth, Usage(i, o, item.provider, item.model),
                    QuotaTicket(item.question, PURPOSE), self.runtime)
            except Exception as exc:  # the title is still worth writing
                log.error("topic summary not charged", error=f"{type(exc).__name__}: {exc}")

    async def _store(self, item: Item, title: str) -> None:
        """Write the title unless the conversation has one already (a user's rename wins)."""
        userdb, cache = self.runtime.userdb, self.runtime.cache
        try:
            if not await userdb.set_topic_summary(item.conversation_id, title, only_if_unset=True):
                return
            await cache.set_topic_summary(item.auth.user_id, item.conversation_id, title)
            # A rename that landed between the two writes wrote the cache before this did.
            meta = await userdb.get(item.conversation_id)
            if meta is not None and meta["topic_summary"] not in (None, title):
                await cache.set_topic_summary(item.auth.user_id, item.conversation_id,
                                              meta["topic_summary"])
        except Exception as exc:
            log.warning("topic summary not stored", error=f"{type(exc).__name__}: {exc}")
