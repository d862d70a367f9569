"""Streaming queries their owner may stop (`POST /v1/streaming_query/interrupt`).

Each live stream is known by the `request_id` of its `start` event, in this process only (a
replica does not see another's streams). A stream is entered when it starts and removed when it
ends, however it ends, so the table holds at most the streams being served. The ids of the
last `FINISHED_KEPT` streams to end are kept a while longer (with their owner), so that an
interrupt racing the stream's end hears "already completed" (200, `interrupted: false`), as from
upstream, rather than "not found".
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

import structlog

# Streams a process tracks at most; past it a new stream still runs but cannot be interrupted.
MAX_LIVE_STREAMS = 10_000
# Ended streams remembered (id -> owner), oldest forgotten first.
FINISHED_KEPT = 1024
INTERRUPTED_TEXT = "Response stopped by the user."
log = structlog.get_logger("lcore.interrupts")


class Outcome(Enum):
    INTERRUPTED = "interrupted"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    ALREADY_DONE = "already_done"


@dataclass
class LiveStream:
    """One stream: whose it is, whether it was told to stop, and the task waiting on Llama
    Stack right now (None between chunks), which an interrupt cancels."""

    request_id: str
    user_id: str
    interrupted: bool = False
    waiting: asyncio.Task[object] | None = field(default=None, repr=False)
    cancelled: bool = False

    def stop(self) -> None:
        self.interrupted = True
        if self.waiting is not None and not self.cancelled:
            # Parked on the next chunk (a long tool call, a slow model): wake it now. Between
            # chunks the flag alone is enough, the loop looks at it before waiting again.
            self.cancelled = True
            self.waiting.cancel()

    def caught(self) -> bool:
        """Inside `except CancelledError` around the wait: True when the cancellation was this
        stream's interrupt alone (then it is taken back and the stream ends cleanly)."""
        task = asyncio.current_task()
        if not self.cancelled or task is None:
            return False
        self.cancelled = False
        return task.uncancel() == 0


class LiveStreams:
    """The live streams of this process, by request id."""

    def __init__(self, limit: int = MAX_LIVE_STREAMS, finished_kept: int = FINISHED_KEPT) -> None:
        self.limit = limit
        self._streams: dict[str, LiveStream] = {}
        self.finished_kept = finished_kept
        self._finished: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, user_id: str) -> LiveStream:
        """A new stream with a fresh request id, tracked while there is room."""
        stream = LiveStream(str(uuid.uuid4()), user_id)
        if len(self._streams) < self.limit:
            self._streams[stream.request_id] = stream
        else:
            log.warning("too many live streams to track; this one cannot be interrupted",
                        limit=self.limit)
        return stream

    def close(self, stream: LiveStream) -> None:
        if self._streams.pop(stream.request_id, None) is None or self.finished_kept <= 0:
            return
        self._finished[stream.request_id] = stream.user_id
        while len(self._finished) > self.finished_kept:
            self._finished.popitem(last=False)

    def interrupt(self, request_id: str, user_id: str) -> Outcome:
        stream = self._streams.get(request_id)
        if stream is None:
            owner = self._finished.get(request_id)
            if owner is None:
                return Outcome.NOT_FOUND
            return Outcome.ALREADY_DONE if owner == user_id else Outcome.FORBIDDEN
        if stream.user_id != user_id:
            log.warning("interrupt of another user's stream refused", request_id=request_id)
            return Outcome.FORBIDDEN
        stream.stop()
        return Outcome.INTERRUPTED


def close_markdown(text: str) -> str:
    """What ends `text`'s open Markdown code fence, if it has one (a cut answer may)."""
    return "\n```" if text.count("```") % 2 else ""
